"""The geodl/geoInfer chip grid shared by chip export and tiled prediction.

Origins run 0, s, 2s, ...; a chip that would cross the raster edge is shifted back to
end exactly on it, and duplicates that shift creates are dropped. An axis shorter than
one chip gets a single chip at 0, padded on the far side (the padding is reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


def axis_origins(length: int, chip: int, stride: int) -> list[int]:
    """Chip origins along one axis of `length` pixels."""
    if length < 1 or chip < 1 or stride < 1:
        raise ValueError(f"length, chip and stride must be positive (got {length}, {chip}, {stride})")
    if length <= chip:
        return [0]
    last = length - chip
    origins = list(range(0, last, stride))
    origins.append(last)  # the edge-shifted chip; range() stops before `last`, so no duplicate
    return origins


@dataclass(frozen=True)
class Window:
    """A chip window in pixel coordinates of the source raster.

    `width`/`height` are the pixels read from the raster; `pad_x`/`pad_y` are added on the
    right/bottom to reach the chip size when the raster is smaller than one chip.
    """

    xoff: int
    yoff: int
    width: int
    height: int
    pad_x: int = 0
    pad_y: int = 0

    @property
    def row(self) -> int:
        return self.yoff

    @property
    def col(self) -> int:
        return self.xoff


@dataclass(frozen=True)
class ChipGrid:
    """All chip windows of a raster, row-major."""

    raster_width: int
    raster_height: int
    chip: int
    stride_x: int
    stride_y: int

    @property
    def xs(self) -> list[int]:
        return axis_origins(self.raster_width, self.chip, self.stride_x)

    @property
    def ys(self) -> list[int]:
        return axis_origins(self.raster_height, self.chip, self.stride_y)

    @property
    def pad_x(self) -> int:
        return max(0, self.chip - self.raster_width)

    @property
    def pad_y(self) -> int:
        return max(0, self.chip - self.raster_height)

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def __iter__(self) -> Iterator[Window]:
        w = min(self.chip, self.raster_width)
        h = min(self.chip, self.raster_height)
        xs = self.xs
        for y in self.ys:
            for x in xs:
                yield Window(x, y, w, h, self.pad_x, self.pad_y)


def make_grid(width: int, height: int, chip: int, stride_x: int | None = None, stride_y: int | None = None) -> ChipGrid:
    """Grid with strides defaulting to the chip size (no overlap).

    Strides larger than the chip are allowed (sparse sampling for training); tiled
    prediction checks its own, stricter condition.
    """
    sx = stride_x or chip
    sy = stride_y or chip
    if chip < 1:
        raise ValueError(f"chip size must be positive (got {chip})")
    if sx < 1 or sy < 1:
        raise ValueError(f"strides must be positive (got {sx}, {sy})")
    return ChipGrid(width, height, chip, sx, sy)
