"""Sample diversity of a dissection's held-out images, and the collapse check.

A collapsed generator (all held-out images nearly the same) makes almost every unit look
interpretable, so a dissection of such a generator is marked. Two measures, both computed by
the dissection from integer counts (``gan_monitor.dissection.concept_counts``; exactly the
same for any batch size or number of ranks):

* ``pixel_diversity``: mean over pixels and colour channels of the standard deviation across
  the held-out images ([-1, 1] images; about 0.3-0.6 for varied natural-looking images, 0 when
  every image is the same);
* ``presence_entropy``: sum over concepts of the binary entropy (bits) of "the concept appears
  in an image"; 0 when every image shows the same set of concepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gan_monitor.core.errors import SignalError

__all__ = ["Diversity", "sample_diversity"]


@dataclass(frozen=True)
class Diversity:
    pixel_diversity: float
    presence_entropy: float
    collapsed: bool

    def scalars(self) -> dict[str, float]:
        return {"pixel_diversity": self.pixel_diversity, "presence_entropy": self.presence_entropy,
                "collapsed": float(self.collapsed)}

    def to_dict(self) -> dict[str, Any]:
        return {"pixel_diversity": self.pixel_diversity, "presence_entropy": self.presence_entropy,
                "collapsed": self.collapsed}


def sample_diversity(result, min_pixel_diversity: float = 0.02) -> Diversity:
    """The diversity of ``result``'s held-out images; ``collapsed`` when ``pixel_diversity``
    is below ``min_pixel_diversity``."""
    stats = getattr(result, "sample_stats", None)
    if not stats:
        raise SignalError("this dissection result has no sample_stats (made by an older gan_monitor); "
                          "dissect again to measure sample diversity.")
    pixel = float(stats["pixel_diversity"])
    return Diversity(pixel, float(stats["presence_entropy"]), pixel < float(min_pixel_diversity))
