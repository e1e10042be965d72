"""Sinks for results: ``tensorboard`` (every TensorBoard write), ``store`` (the CLI's
output folder: written, read and checked in one place), ``html`` and the Jinja2
``templates`` (the HTML report), ``pictures`` and ``unit_examples`` (unit grids and
each unit's top images, regenerated from the held-out inputs); ``full_report.write_report``
(``gan_monitor.write_report``) writes the whole report of a ``DissectionResult`` in one call;
``run_record`` keeps ``run.json`` (which run a folder holds and whether it finished).
"""
