"""Every exception gan_monitor raises on purpose, in one place.

All derive from :class:`GanMonitorError`, so ``except GanMonitorError`` catches what the
package raises about the user's input or environment (a torch error from the user's own
model is never wrapped into these). Plain ``ValueError``/``TypeError`` are still used for
a bad argument, as Python itself does; these classes name situations instead.
"""
from __future__ import annotations

__all__ = ["GanMonitorError", "CheckpointError", "UsageError", "CommandError", "ReportError",
           "LaunchError", "RankFailure", "NondeterministicGeneratorError",
           "LayerSelectionError", "AbsentConceptError"]


class GanMonitorError(Exception):
    """Base class of gan_monitor's own exceptions."""


class CheckpointError(GanMonitorError):
    """A checkpoint that cannot be used, with the reason and the fix."""


class UsageError(GanMonitorError):
    """A command line that cannot be run as written (the CLI exits with status 2)."""


class CommandError(GanMonitorError):
    """A CLI command that failed for a reason the user can fix (the CLI exits with status 1)."""


class ReportError(CommandError):
    """An output folder that cannot be turned into a report or comparison."""


class LaunchError(GanMonitorError, RuntimeError):
    """A rank of a multi-process run failed; ``kind`` is the name of its exception type."""

    def __init__(self, message: str, kind: str = "RuntimeError"):
        super().__init__(message)
        self.kind = kind


class RankFailure(GanMonitorError, RuntimeError):
    """Raised on every rank when some rank's local work failed. ``failed``: ``{rank: message}``."""

    def __init__(self, what: str, failed: dict[int, str], world_size: int):
        self.failed = dict(failed)
        if len(failed) == world_size and len(set(failed.values())) == 1:
            super().__init__(f"{what} failed on all {world_size} ranks ({next(iter(failed.values()))}).")
            return
        ranks = ", ".join(str(r) for r in sorted(failed))
        details = "; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items()))
        super().__init__(f"{what} failed on rank{'s' if len(failed) > 1 else ''} {ranks} of {world_size} "
                         f"({details}); all ranks abandoned it together.")


class SignalError(GanMonitorError, ValueError):
    """Training signals (``gan_monitor.signals``): bad concept statistics or options."""


class NondeterministicGeneratorError(GanMonitorError, RuntimeError):
    """A generator that gave different images for the same held-out inputs
    (``gan_monitor.core.determinism``): every measurement on it would move between runs."""


class LayerSelectionError(GanMonitorError, ValueError):
    """A layer name that does not pick one featuremap (``gan_monitor.core.layer_selectors``):
    an unknown selector for a tuple/dict output, or a module that runs more than once per
    forward pass without naming which call (``"block.act#1"``)."""


class AbsentConceptError(GanMonitorError, ValueError):
    """A concept that the segmenter finds in none of the held-out images, so a measure
    normalised by its presence (``ace``'s Eq. 4, a unit ranking by removal) has no value.
    ``concept``: its name. The monitor's causal-effect schedule skips such a concept."""

    def __init__(self, message: str, concept: str = ""):
        super().__init__(message)
        self.concept = concept
