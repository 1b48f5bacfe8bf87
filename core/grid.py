"""The geodl/geoInfer chip grid shared by chip export and tiled prediction.

Origins run 0, s, 2s, ...; a chip that would cross the raster edge is shifted back to
end exactly on it, and duplicates that shift creates are dropped. An axis shorter than
one chip gets a single chip at 0, padded on the far side (the padding is reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import GeoSegError

if TYPE_CHECKING:
    from .tiling import TilingPlan


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


@dataclass(frozen=True)
class Tiling:
    """Tile origins per axis and the span [start, end) each tile keeps."""

    chip: int
    xs: list[int]
    ys: list[int]
    keep_x: list[tuple[int, int]]
    keep_y: list[tuple[int, int]]
    stride_x: int = 0
    stride_y: int = 0
    crop: int = 0
    plan: TilingPlan | None = None  # how the tiling was chosen (core.tiling), when `_resolve` chose it

    @property
    def tiles(self) -> int:
        return len(self.xs) * len(self.ys)


def keep_spans(length: int, chip: int, stride: int, crop: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Origins and kept spans on one axis: tile i keeps [o_i + crop, o_{i+1} + crop) (from 0 for the
    first tile, to the raster edge for the last), always inside its centre since stride ≤ chip − 2·crop."""
    origins = axis_origins(length, chip, stride)
    starts = [0] + [o + crop for o in origins[1:]]
    ends = starts[1:] + [length]
    return origins, list(zip(starts, ends, strict=True))


def make_tiling(width: int, height: int, chip: int, stride_x: int, stride_y: int, crop: int) -> Tiling:
    if chip < 8:
        raise GeoSegError(f"CHIP_SIZE must be at least 8 pixels (got {chip}).", param="CHIP_SIZE")
    if crop < 0 or 2 * crop >= chip:
        raise GeoSegError(f"CROP must be at least 0 and less than half of CHIP_SIZE {chip} (got {crop}).", param="CROP")
    for name, stride in (("STRIDE_X", stride_x), ("STRIDE_Y", stride_y)):
        if stride < 1 or stride > chip - 2 * crop:
            raise GeoSegError(
                f"{name} ({stride}) must be between 1 and CHIP_SIZE − 2·CROP = {chip} − 2·{crop} = {chip - 2 * crop}, "
                "so that the kept tile centres meet without gaps.",
                param=name,
            )
    xs, kx = keep_spans(width, chip, stride_x, crop)
    ys, ky = keep_spans(height, chip, stride_y, crop)
    return Tiling(chip, xs, ys, kx, ky, stride_x, stride_y, crop)
