"""Interventions: which units cause a concept (paper Sec. 3.2, 4.3; docs/method.md §7-§8).

``effects`` (ablating or inserting units in a region and measuring the change in a
concept's pixels), ``ace`` (average causal effect of a unit set, with a confidence
interval), ``causal_units`` (units ranked by their causal effect, learned by
gradient as in the paper).
"""
