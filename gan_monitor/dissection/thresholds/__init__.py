"""Per-unit activation thresholds: everything about "when is a unit on".

``modes`` (the ``Quantile`` and ``IQR`` objects users pass as ``threshold=``),
``quantile`` / ``quantile_pass`` / ``active_pixels`` / ``top_values`` (the exact
top-quantile threshold over a held-out sample; ``streaming``: the same without caching
the sample, above the memory budget), ``iqr`` / ``iqr_selection`` / ``level_counts``
(the ICLR 2019 choice of level and label by the IQR score; docs/method.md §3), and
``sparse_tally`` (counting at known thresholds, upsampling only where a unit can be on),
and ``kernels`` (small C kernels compiled on first use that count faster on a CPU).
"""
