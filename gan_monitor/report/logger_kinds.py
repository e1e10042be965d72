"""Which logger is which: a Lightning logger, a plain ``SummaryWriter``, or a list of them,
seen as a list of loggers, and what kind of pictures each can take.

Loggers are recognised by what they offer (no import of wandb or mlflow here):

* ``"tensorboard"``: ``logger.experiment`` is a TensorBoard ``SummaryWriter``;
* ``"wandb"``: the logger has ``log_image`` and ``log_table`` (Lightning's ``WandbLogger``);
* ``"mlflow"``: the logger has a ``run_id`` and its ``experiment`` is an ``MlflowClient``
  (``log_image``, ``log_dict``; Lightning's ``MLFlowLogger``);
* None: scalars only (``log_metrics``), e.g. ``CSVLogger``.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["SummaryWriterLogger", "as_loggers", "supports_rich_media", "logger_kind"]


class SummaryWriterLogger:
    """A ``torch.utils.tensorboard.SummaryWriter`` seen as a Lightning logger
    (``log_metrics``, ``save``, ``experiment``), so that it takes the same writes."""

    def __init__(self, writer):
        self.experiment = writer

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.experiment.add_scalar(name, value, step)

    def save(self) -> None:
        self.experiment.flush()


def as_loggers(loggers: Any) -> list[Any]:
    """A Lightning logger, a ``SummaryWriter`` or a sequence of them, as a list of loggers."""
    items = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
    out = []
    for item in items:
        if hasattr(item, "log_metrics"):
            out.append(item)
        elif hasattr(item, "add_scalar"):
            out.append(SummaryWriterLogger(item))
        else:
            raise TypeError(f"expected Lightning loggers or a SummaryWriter, got {type(item).__name__}.")
    return out


def supports_rich_media(logger) -> bool:
    """True when ``logger.experiment`` is a TensorBoard-style ``SummaryWriter``."""
    try:
        exp = logger.experiment
    except Exception:  # a logger that cannot start its experiment here (e.g. rank != 0)
        return False
    return all(hasattr(exp, m) for m in ("add_image", "add_histogram", "add_text", "add_custom_scalars"))


def logger_kind(logger) -> str | None:
    """``"tensorboard"``, ``"wandb"``, ``"mlflow"`` or None (scalars only)."""
    if supports_rich_media(logger):
        return "tensorboard"
    if callable(getattr(logger, "log_image", None)) and callable(getattr(logger, "log_table", None)):
        return "wandb"
    if getattr(logger, "run_id", None) is not None:
        try:
            client = logger.experiment
        except Exception:  # cannot start here (e.g. rank != 0)
            return None
        if callable(getattr(client, "log_image", None)) and callable(getattr(client, "log_dict", None)):
            return "mlflow"
    return None
