"""Per-unit activation thresholds: everything about "when is a unit on".

``modes`` (the ``Quantile`` and ``IQR`` objects users pass as ``threshold=``),
``quantile`` / ``quantile_pass`` / ``active_pixels`` / ``top_values`` (the exact
top-quantile threshold over a held-out sample), ``iqr`` / ``iqr_selection`` /
``level_counts`` (the ICLR 2019 choice of level and label by the IQR
score; docs/method.md §3).
"""
