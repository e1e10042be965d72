"""Foundations every stage uses: nothing here knows about dissection.

``tracing`` (``Trace`` records and ``Edit`` changes a layer's output; layer names),
``inputs`` / ``held_out`` / ``input_factories`` (the fixed held-out inputs and how
to make them for each generator family), ``checkpoints`` (weights-only loading),
``distributed`` (the cross-rank communicator: summed counts, order-statistic
selection, gathers), ``launch`` (devices and processes), ``validation`` (shared
value checks) and ``errors`` (the package's exceptions).
"""
