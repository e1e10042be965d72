"""The ``gan-monitor`` command: ``main`` dispatches to ``demo``, ``dissect`` (saved
checkpoints, one or a timeline), ``report`` (HTML from a dissection folder),
``compare`` (folders side by side) and ``paint`` (the GANPaint page). ``options``
holds the argument choices shared by the subcommands.
"""
