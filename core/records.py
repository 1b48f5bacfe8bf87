"""Records passed between chip export (`core.chips`) and the chip index (`core.index`).

Kept apart so the index writer does not import the exporter that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .stats import Moments


@dataclass
class ChipRecord:
    """One exported chip: where it is, what it holds."""

    image: str
    mask: str
    xoff: int
    yoff: int
    positive: bool
    nodata_fraction: float
    class_counts: dict[int, int]
    moments: Moments = field(repr=False)
    split: str = "train"
    scene: str = ""  # the source raster's scene id (chips.csv `scene`; several with APPEND)
