"""The Lightning callback: :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor`
(and ``DissectionMonitorPL`` for ``pytorch_lightning``), thin glue around the pipeline.

* ``dissection_monitor``: the callback (schedule, held-out sample, checkpoint state);
* ``distributed_dissection``: one dissection on every DDP rank, logged on rank 0;
* ``unit_fid``: ``UnitFIDOptions`` and the per-unit FID / artifact-ablation schedule;
* ``ace``: ``AceOptions`` and the causal-effect schedule;
* ``training_signals``: ``SignalOptions`` and the generated-vs-real, diversity and unit-churn signals;
* ``context``: ``PictureOptions`` and ``MonitorContext``, all the schedules see of the monitor;
* ``failure_policy``: warn once (or raise when strict), count, keep training;
* ``legacy_arguments``: the 0.1 keywords, translated with a ``FutureWarning``.
"""
