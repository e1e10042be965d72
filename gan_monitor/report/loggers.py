"""Pictures and tables for the loggers GAN researchers use, not only TensorBoard.

:class:`MediaLogger` sends one step's images (PIL) and tables (``columns, rows``) to each
logger in the form it understands:

* TensorBoard (``experiment`` is a ``SummaryWriter``): ``add_image`` and ``add_text`` (a
  Markdown table);
* Weights & Biases (Lightning's ``WandbLogger``: ``log_image``/``log_table``);
* MLflow (Lightning's ``MLFlowLogger``: its ``experiment`` is an ``MlflowClient`` and it has a
  ``run_id``): ``client.log_image`` (``<key>/step_<step>.png``) and ``client.log_dict``
  (``<key>/step_<step>.json``, ``{"columns", "data"}``);
* any other logger: nothing (it gets the scalars through ``log_metrics``) and one warning
  per logger type.

Loggers are recognised by what they offer (:mod:`gan_monitor.report.logger_kinds`). Scalars
are not sent here: ``gan_monitor.report.tensorboard`` sends them to every logger; its
:class:`~gan_monitor.report.tensorboard.DissectionWriter` sends the dissection's pictures and
tables to W&B and MLflow through here.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

from gan_monitor.report import pictures
from gan_monitor.report.logger_kinds import as_loggers, logger_kind
from gan_monitor.report.signals_view import markdown_table

__all__ = ["logger_kind", "MediaLogger"]


def _file_key(key: str) -> str:
    return key.replace(":", "_").replace(" ", "_")


class MediaLogger:
    """Sends images and tables to every logger that takes them (module docstring)."""

    def __init__(self):
        self._warned: set[str] = set()

    def log(self, loggers: Any, step: int, images: Mapping[str, Any] | None = None,
            tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None) -> list[str]:
        """Log ``images`` (``{key: PIL image}``) and ``tables`` (``{key: (columns, rows)}``) at
        ``step``; returns the kinds of the loggers that got them."""
        images, tables, step = dict(images or {}), dict(tables or {}), int(step)
        done = []
        for logger in as_loggers(loggers):
            kind = logger_kind(logger)
            if kind is None:
                self._warn(logger)
                continue
            getattr(self, f"_{kind}")(logger, step, images, tables)
            done.append(kind)
        return done

    def _warn(self, logger) -> None:
        name = type(logger).__name__
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"gan_monitor: {name} cannot show images or tables; it gets the training-signal "
                          "scalars only. Use a TensorBoardLogger, WandbLogger or MLFlowLogger to see the charts.",
                          stacklevel=3)

    @staticmethod
    def _tensorboard(logger, step, images, tables) -> None:
        writer = logger.experiment
        for key, image in images.items():
            writer.add_image(key, pictures.to_chw(image), step, dataformats="CHW")
        for key, (columns, rows) in tables.items():
            writer.add_text(key, markdown_table(columns, rows), step)
        writer.flush()

    @staticmethod
    def _wandb(logger, step, images, tables) -> None:
        for key, image in images.items():
            logger.log_image(key=key, images=[image], step=step)
        for key, (columns, rows) in tables.items():
            logger.log_table(key=key, columns=list(columns), data=[list(r) for r in rows], step=step)

    @staticmethod
    def _mlflow(logger, step, images, tables) -> None:
        client, run = logger.experiment, logger.run_id
        for key, image in images.items():
            client.log_image(run, image, artifact_file=f"{_file_key(key)}/step_{step:08d}.png")
        for key, (columns, rows) in tables.items():
            client.log_dict(run, {"columns": list(columns), "data": [list(r) for r in rows], "step": step},
                            f"{_file_key(key)}/step_{step:08d}.json")
