"""Tiled prediction (geoInfer done right): any raster → georeferenced class map.

Tiles lie on the chip grid (origins 0, s, 2s, …, the last shifted to the raster edge, no
duplicates). Each tile contributes only its centre: CROP pixels are dropped at every tile edge
that is not the raster's own edge, and neighbouring kept regions meet exactly, so every pixel
is written once. For a model whose receptive field reaches no further than CROP pixels the
result equals whole-image inference.

The raster is streamed one strip of tiles at a time (memory does not grow with its height),
tiles are predicted in batches, and the output is written under a temporary name and renamed
only when complete. Reading, inference and writing overlap in three threads joined by bounded
queues, so a run goes at the speed of the model; the batch size can be chosen within a memory
budget, and an out-of-memory error halves it and retries the same tiles.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from typing import cast

import numpy as np
from osgeo import gdal, osr

from .backends import Backend, open_backend, read_model, read_model_card
from .card import CardClass, ModelCard
from .errors import Cancelled, GeoSegError, IsCancelled, Progress, first_line
from .extent import clip_to_extent
from .foreign import ModelIO, OpenedModel
from .gdalx import with_gdal_exceptions
from .grid import Window, axis_origins
from .memory import check_budget, memory_budget_mb, retry_halving_batch
from .options import TTA_CHOICES, values
from .params import SegmentParams  # defined once there, with its front-end metadata
from .pipeline import END, Pipe, Stage, Stop
from .raster import MASK_NODATA, RasterInfo, open_raster, raster_info, read_window, set_category_names
from .resample import GridPlan, flush, plan_grid, warp_to_grid, warped_source
from .staging import check_new_file, remove_stale_outputs, staged_file
from .tiling import (
    Request,
    TilingPlan,
    describe,
    local_batch,
    model_profile,
    plan_tiling,
    stride_factor,
    tile_bytes,
)
from .tta import view_count, with_views

log = logging.getLogger("geoseg")

PROB_NODATA = -1.0
TTA_VALUES = values(TTA_CHOICES)
CREATE_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]

__all__ = [
    "SegmentParams",
    "SegmentResult",
    "check_params",
    "choose_batch_size",
    "compatibility_warnings",
    "preflight",
    "read_model_card",
    "segment",
    "tile_memory_bytes",
    "tiling_plan",
]


@dataclass(frozen=True)
class SegmentResult:
    output_path: str
    probabilities_path: str | None
    card: ModelCard
    backend: str
    provider: str
    tiles: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    batch_size: int = 0  # the batch size the run started with (chosen, when BATCH_SIZE was 0)
    final_batch_size: int = 0  # lower than batch_size when out-of-memory errors halved it
    vector_path: str | None = None  # OUTPUT_VECTOR, when written


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


@with_gdal_exceptions
def compatibility_warnings(
    card: ModelCard, raster_path: str, info: RasterInfo | None = None, grid: bool = True
) -> list[str]:
    """Differences between the raster and the training data that may hurt the result (`grid` False:
    bands only, as the pixel size and CRS are the working grid's business: core.resample)."""
    info = info or raster_info(open_raster(raster_path), raster_path)
    out = []
    if info.band_count < card.in_channels:
        out.append(f"The raster has {info.band_count} bands, but the model was trained on {card.in_channels}.")
    elif info.band_count > card.in_channels:
        out.append(f"The raster has {info.band_count} bands; the model reads bands {list(card.bands)} only.")
    px = card.pixel_size
    if not grid:
        return out
    if px and any(abs(a - b) > 0.01 * abs(b) for a, b in zip(info.pixel_size, px, strict=False)):
        out.append(
            f"The raster's pixel size ({info.pixel_size[0]:g} × {info.pixel_size[1]:g}) differs from the "
            f"training data's ({px[0]:g} × {px[1]:g}); resample it to the training resolution for best results."
        )
    crs = card.crs.wkt if card.crs else None
    if crs and info.srs is not None:
        trained = osr.SpatialReference()
        trained.ImportFromWkt(crs)
        if not trained.IsSame(info.srs):
            name = (card.crs.authid if card.crs else None) or trained.GetName()
            out.append(f"The raster's CRS ({info.srs.GetName()}) differs from the training data's ({name}).")
    return out


def _resolve(
    p: SegmentParams, card: ModelCard, io: ModelIO | None = None, info: RasterInfo | None = None
) -> TilingPlan:
    """CHIP_SIZE, STRIDE_X/Y and CROP of a run (core.tiling): what the user set, else for a local model
    the largest chip that fits the memory budget with crop max(r, 16) and stride chip − 2·crop, else
    the trained chip, stride chip/2 and crop chip/8. `info`: the raster (working grid) it tiles."""
    trained = io.fixed_size if io and io.fixed_size else card.chip_size
    named = (("CHIP_SIZE", p.chip_size), ("STRIDE_X", p.stride_x), ("STRIDE_Y", p.stride_y), ("CROP", p.crop))
    explicit = tuple(name for name, v in named if v is not None and (v or name == "CROP"))
    req = Request(p.chip_size or None, p.stride_x or None, p.stride_y or None, p.crop, trained, explicit)
    if len(explicit) == 4:  # nothing to choose: no model run
        return plan_tiling(req, None, 1, lambda chip: False, False, None)
    profile = model_profile(p.model_path, card, io, p.output_index)
    on_cuda = _runs_on_cuda(p)
    per_pixel = profile.activation_bytes_per_pixel
    budget = memory_budget_mb(p.memory_budget_mb) or default_budget_mb(cast(Backend, _Device(on_cuda)))
    batch = (io.fixed_batch if io else None) or p.batch_size or 1

    def fits(chip: int) -> bool:
        tiles = local_batch(batch, chip, on_cuda)
        return per_pixel is not None and tiles * tile_bytes(card, chip, per_pixel) <= budget * 1e6

    extent = min(info.width, info.height) if info is not None else None
    return plan_tiling(req, profile.locality, stride_factor(card), fits, on_cuda, extent)


@dataclass(frozen=True)
class _Device:
    """The one thing `default_budget_mb` asks of a backend, before any is opened."""

    on_cuda: bool


def _runs_on_cuda(p: SegmentParams) -> bool:
    """Whether the run's backend will use a GPU (its tile cap and default budget), without building it."""
    if p.device == "cpu":
        return False
    try:
        if p.model_path.lower().endswith(".onnx") and p.backend != "torch":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001  (no such engine installed: segment reports it)
        return False


def _validate(p: SegmentParams) -> None:
    if p.batch_size < 0:
        raise GeoSegError(
            f"BATCH_SIZE must be at least 1, or 0 to choose it automatically (got {p.batch_size}).", param="BATCH_SIZE"
        )
    if p.memory_budget_mb < 0:
        raise GeoSegError(
            f"The memory budget must be 0 (none) or a positive number of MB (got {p.memory_budget_mb}).",
            param="MEMORY_BUDGET",
        )
    for what, path in (("OUTPUT", p.output_path), ("OUTPUT_PROBABILITIES", p.probabilities_path)):
        if path is None:
            continue
        if not path.lower().endswith((".tif", ".tiff")):
            raise GeoSegError(f"{what} must be a GeoTIFF file name ending in .tif (got {path}).", param=what)
        check_new_file(path, what, param=what)
    if p.probabilities_path and os.path.abspath(p.probabilities_path) == os.path.abspath(p.output_path):
        raise GeoSegError("OUTPUT_PROBABILITIES must differ from OUTPUT.", param="OUTPUT_PROBABILITIES")
    _validate_regions(p)


def _validate_regions(p: SegmentParams) -> None:
    """SIEVE, TTA and OUTPUT_VECTOR (issue 17)."""
    if p.sieve < 0:
        raise GeoSegError(f"SIEVE must be at least 0 (got {p.sieve}); 0 is off.", param="SIEVE")
    if p.tta not in TTA_VALUES:
        raise GeoSegError(f"TTA must be one of {', '.join(TTA_VALUES)} (got {p.tta}).", param="TTA")
    if p.vector_path is None:
        return
    if not p.vector_path.lower().endswith(".gpkg"):
        raise GeoSegError(
            f"OUTPUT_VECTOR must be a GeoPackage file name ending in .gpkg (got {p.vector_path}).",
            param="OUTPUT_VECTOR",
        )
    check_new_file(p.vector_path, "OUTPUT_VECTOR", param="OUTPUT_VECTOR")


def _create(path: str, info, bands: int, gdal_type: int, extra: list[str]) -> gdal.Dataset:
    ds = gdal.GetDriverByName("GTiff").Create(path, info.width, info.height, bands, gdal_type, CREATE_OPTIONS + extra)
    ds.SetGeoTransform(info.geotransform)
    if info.wkt:
        ds.SetProjection(info.wkt)
    return ds


def _style_classes(band: gdal.Band, classes: tuple[CardClass, ...]) -> None:
    """Colour table (inside the GeoTIFF), so any GIS shows the map in the card's colours."""
    table = gdal.ColorTable()
    for c in classes:
        table.SetColorEntry(c.value, (*c.rgb, 255))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetNoDataValue(MASK_NODATA)


def _new_map(path: str, info, card: ModelCard, prob: bool) -> gdal.Dataset:
    """An empty class map (Byte, colour table) or probability map (Float32, one named band per class)
    on `info`'s grid: the one way every writer (tiles, write-back, cluster assembly) starts a map."""
    k = len(card.classes)
    out = _create(
        path, info, k if prob else 1, gdal.GDT_Float32 if prob else gdal.GDT_Byte, ["PREDICTOR=3"] if prob else []
    )
    if not prob:
        _style_classes(out.GetRasterBand(1), card.classes)
        return out
    for i, c in enumerate(card.classes):
        out.GetRasterBand(i + 1).SetDescription(c.name)
        out.GetRasterBand(i + 1).SetNoDataValue(PROB_NODATA)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class RowWriter:
    """Writes rows of a streamed result in whole rows of the file's blocks.

    Each compressed tile is then written exactly once (rewriting a DEFLATE tile appends a new
    copy), so `flush` can push every dirty block out of GDAL's cache: memory stays flat.
    """

    def __init__(self, bands: list[gdal.Band], flush: Callable[[], None]) -> None:
        self.bands, self.flush = bands, flush
        self.block = bands[0].GetBlockSize()[1]
        self.rows: list[np.ndarray] = []  # pending [bands, h, width] pieces, starting at row self.y
        self.y = 0

    def write(self, data: np.ndarray) -> None:
        self.rows.append(data)
        whole = (sum(r.shape[1] for r in self.rows) // self.block) * self.block
        if whole:
            self._emit(whole)

    def close(self) -> None:
        pending = sum(r.shape[1] for r in self.rows)
        if pending:
            self._emit(pending)

    def _emit(self, n: int) -> None:
        data = np.concatenate(self.rows, axis=1)
        for band, rows in zip(self.bands, data[:, :n], strict=True):
            band.WriteArray(rows, 0, self.y)
        self.flush()
        self.rows = [data[:, n:]] if data.shape[1] > n else []
        self.y += n


class PyramidWriter:
    """Full-resolution rows plus nearest-neighbour overviews taken from them as they stream by.

    Building overviews afterwards would read the whole map back through GDAL's block cache
    (hundreds of MB on large rasters); here each level is written once, like the full map.
    """

    def __init__(self, ds: gdal.Dataset) -> None:
        self.width, self.height = ds.RasterXSize, ds.RasterYSize
        self.levels: list[int] = []
        while max(self.width, self.height) // (2 ** (len(self.levels) + 1)) >= 256:
            self.levels.append(2 ** (len(self.levels) + 1))
        if self.levels:
            ds.BuildOverviews("NONE", self.levels)  # empty overview bands, filled below
        bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
        self.writers = [RowWriter(bands, ds.FlushCache)] + [
            RowWriter([b.GetOverview(li) for b in bands], ds.FlushCache) for li in range(len(self.levels))
        ]
        self.cols = [np.minimum(np.arange(-(-self.width // f)) * f + f // 2, self.width - 1) for f in self.levels]
        self.next_row = [0] * len(self.levels)
        self.y = 0

    def write(self, data: np.ndarray) -> None:
        """Rows [self.y, self.y + n) of every band: data [bands, n, width]."""
        n = data.shape[1]
        self.writers[0].write(data)
        for li, f in enumerate(self.levels):
            rows = []
            while self.next_row[li] < -(-self.height // f):
                src = min(self.next_row[li] * f + f // 2, self.height - 1)
                if src >= self.y + n:
                    break
                rows.append(src - self.y)
                self.next_row[li] += 1
            if rows:
                self.writers[li + 1].write(data[:, rows][:, :, self.cols[li]])
        self.y += n

    def close(self) -> None:
        for w in self.writers:
            w.close()


MAX_AUTO_BATCH = {"cpu": 8, "cuda": 64}  # beyond these a larger batch buys no throughput (CPU: measured)


READ_COLUMNS = 1024  # columns per GDAL read (whole blocks): bounds GDAL's block cache, spreads the reads
MAX_ALIGN_ROWS = 1024  # taller blocks (a single-strip file) are read row range by row range instead


class _RowCache:
    """Full-width rows of the raster (in its own data type, the model's bands only) from the current
    strip's top row down: each block is decoded once per run.

    Consecutive strips share chip − stride rows, and a tile row ends inside a block row, so rows are
    read to the next block boundary, in whole blocks of at most READ_COLUMNS columns, then GDAL's
    cache is flushed (those blocks are never needed again). The next strip's rows are read a chunk
    at a time between the current strip's batches (`plan`, `fetch`), so the reader never stalls the
    model for a whole block row. Memory: chip + stride + one block row of rows, the raster's width.
    """

    def __init__(
        self,
        ds: gdal.Dataset,
        info: RasterInfo,
        tiling: Tiling,
        bands: list[int] | None = None,
        source: gdal.Dataset | None = None,
    ) -> None:
        self.ds, self.info, self.chip, self.bands, self.source = ds, info, tiling.chip, bands, source
        bw, bh = ds.GetRasterBand(1).GetBlockSize()
        self.align = bh if 1 < bh <= MAX_ALIGN_ROWS else 1
        self.columns = max(bw, READ_COLUMNS // bw * bw) if bw < info.width else info.width
        step = max((b - a for a, b in zip(tiling.ys, tiling.ys[1:], strict=False)), default=0)
        rows = self.chip + min(step, self.chip) + self.align - 1
        n = len(bands) if bands is not None else info.band_count
        width = max(info.width, self.chip)  # a raster narrower than a chip: padding on the right
        self.pixels = np.zeros((n, rows, width), dtype=info.dtype)
        self.valid = np.zeros((rows, width), dtype=bool)
        self.top = self.rows = 0  # raster row of buffer row 0; complete rows held
        self.pending: list[tuple[int, int, int]] = []  # (y, h, x): reads queued for the next strip

    def strip(self, oy: int) -> tuple[np.ndarray, np.ndarray]:
        """(pixels [bands, chip, width], valid [chip, width]) of rows [oy, oy + chip): views into
        the cache, valid until the next call."""
        self.fetch(len(self.pending))
        keep, shift = self.top + self.rows - oy, oy - self.top
        for i in range(0, keep, shift) if shift > 0 else ():  # shared rows to the front, in pieces that
            n = min(shift, keep - i)  # do not overlap (numpy copies overlapping ranges through a temporary)
            self.pixels[:, i : i + n] = self.pixels[:, shift + i : shift + i + n]
            self.valid[i : i + n] = self.valid[shift + i : shift + i + n]
        self.top, self.rows = oy, max(keep, 0)
        self.plan(oy)
        self.fetch(len(self.pending))
        self.valid[self.rows : self.chip] = False  # below a raster lower than one chip: padding
        return self.pixels[:, : self.chip], self.valid[: self.chip]

    def plan(self, oy: int) -> None:
        """Queue the reads that complete rows [oy, oy + chip), to the next block boundary."""
        y = self.top + self.rows
        end = min(-(-(oy + self.chip) // self.align) * self.align, self.info.height)
        if y < end and y - self.top + end - y <= len(self.valid):
            self.pending = [(y, end - y, x) for x in range(0, self.info.width, self.columns)]

    def fetch(self, count: int) -> None:
        """Do the first `count` queued reads."""
        for y, h, x in self.pending[:count]:
            r, w = y - self.top, min(self.columns, self.info.width - x)
            try:
                pixels, valid = read_window(self.ds, self.info, Window(x, y, w, h))
                flush(self.ds, *([self.source] if self.source is not None else []))
            except GeoSegError:
                raise
            except Exception as e:  # noqa: BLE001  (GDAL I/O and decoding errors of every kind)
                raise GeoSegError(
                    f"INPUT: GDAL could not read columns {x}-{x + w} of rows {y}-{y + h} "
                    f"of {self.info.path} ({first_line(e, 300)})."
                ) from None
            self.pixels[:, r : r + h, x : x + w] = pixels if self.bands is None else pixels[self.bands]
            self.valid[r : r + h, x : x + w] = valid
            if x + w >= self.info.width:  # the row range is complete
                self.valid[r : r + h, self.info.width :] = False  # right of a raster narrower than a chip
                self.rows = r + h
        self.pending = self.pending[count:]


def _runs(origins: list[int]) -> list[tuple[int, int, int]]:
    """(first, end, step) index ranges of equally spaced tile origins (all but an edge-shifted last
    tile, usually): each run is one strided view of the strip."""
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(origins):
        step = origins[i + 1] - origins[i] if i + 1 < len(origins) else 1
        j = i + 1
        while j < len(origins) and origins[j] - origins[j - 1] == step:
            j += 1
        runs.append((i, j, step))
        i = j
    return runs


def _tiles(pixels: np.ndarray, valid: np.ndarray, origins: list[int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalised tiles [n, bands, chip, chip] (float32) at `origins` of a strip, built straight
    from strided views of the strip (no per-tile copy): (pixel − mean) / std in float32, invalid
    pixels 0, the same arithmetic as one tile at a time."""
    chip = pixels.shape[1]
    view = np.lib.stride_tricks.sliding_window_view(pixels, chip, axis=2)  # [bands, chip, x, chip]
    masks = np.lib.stride_tricks.sliding_window_view(valid, chip, axis=1)  # [chip, x, chip]
    x = np.empty((len(origins), pixels.shape[0], chip, chip), dtype=np.float32)
    runs = [(i, j, slice(origins[i], origins[j - 1] + 1, step)) for i, j, step in _runs(origins)]
    for i, j, cols in runs:  # the data type's values as float32 first, then float32 arithmetic
        np.subtract(view[:, :, cols].transpose(2, 0, 1, 3), mean, out=x[i:j], dtype=np.float32, casting="unsafe")
    np.divide(x, std, out=x)
    for i, j, cols in runs:  # nodata → 0 (the mean); NaN pixels are invalid, so they become 0 too
        np.copyto(x[i:j], 0, where=~masks[:, cols].transpose(1, 0, 2)[:, None])
    return x


@dataclass
class _Batch:
    """Normalised tiles of one batch window, as the reader hands them to inference."""

    strip: int  # index into tiling.ys
    first: int  # index of the first tile in tiling.xs
    left: int  # raster column of the window's left edge
    x: np.ndarray  # float32 [n, bands, chip, chip]
    valid: np.ndarray  # bool [chip, window width]
    last: bool  # the strip's last batch


@with_gdal_exceptions  # a pipeline thread: GDAL ≥ 3.7 keeps the exception mode per thread
def _read_batches(
    ds: gdal.Dataset,
    info: RasterInfo,
    tiling: Tiling,
    batch_size: int,
    mean: np.ndarray,
    std: np.ndarray,
    inbox: Pipe[_Batch],
    bands: list[int] | None = None,
    source: gdal.Dataset | None = None,
) -> None:
    """Reader stage: each strip's rows from the row cache (each block decoded once), cut into
    batches of normalised tiles (arrays stay batch-sized whatever the raster's width). `source`:
    the raster under a warped VRT `ds`, whose block cache is flushed with the VRT's."""
    chip, n = tiling.chip, len(tiling.xs)
    cache = _RowCache(ds, info, tiling, bands, source)
    starts = range(0, n, batch_size)
    for si, oy in enumerate(tiling.ys):
        pixels, valid = cache.strip(oy)
        if si + 1 < len(tiling.ys):
            cache.plan(tiling.ys[si + 1])
        for k, b in enumerate(starts):
            xs = tiling.xs[b : b + batch_size]
            x = _tiles(pixels, valid, xs, mean, std)
            window = valid[:, xs[0] : xs[-1] + chip].copy()  # the writer's, after the cache has moved on
            inbox.put(_Batch(si, b, xs[0], x, window, b + batch_size >= n))
            cache.fetch(-(-len(cache.pending) // (len(starts) - k)))  # the next strip's rows, spread evenly
    inbox.put(END)


@dataclass(frozen=True)
class ClassRule:
    """The class-map step: which output channel each pixel gets, and its probabilities.

    Logits: the arg-max, probabilities by softmax. Probabilities from the model (a Deepness model):
    the arg-max, or for a single sigmoid channel (scores [1 − p, p]) 1 where p ≥ 0.5; with the
    model's `threshold` (asked for by MODEL_THRESHOLD) a pixel whose highest probability is below
    it becomes channel 0, and a sigmoid pixel 1 where p ≥ threshold."""

    probabilities: bool = False
    single: bool = False
    threshold: float | None = None

    def channels(self, tile: np.ndarray) -> np.ndarray:
        if self.single:
            return (tile[1] >= (0.5 if self.threshold is None else self.threshold)).astype(np.intp)
        idx = tile.argmax(axis=0)
        if self.threshold is not None and self.probabilities:
            idx[tile.max(axis=0) < self.threshold] = 0
        return idx

    def probabilities_of(self, tile: np.ndarray) -> np.ndarray:
        return tile.copy() if self.probabilities else softmax(tile[None])[0]

    def probabilities_of_batch(self, out: np.ndarray) -> np.ndarray:
        """Probabilities of a batch of the model's outputs [n, classes, h, w] (TTA averages these)."""
        return out if self.probabilities else softmax(out)


def class_rule(io: ModelIO, use_threshold: bool) -> ClassRule:
    """The ClassRule for a model run as `io` says; MODEL_THRESHOLD needs the model's seg_thresh."""
    if use_threshold and io.threshold is None:
        raise GeoSegError(
            "MODEL_THRESHOLD: the model has no probability threshold (Deepness metadata seg_thresh); "
            "turn MODEL_THRESHOLD off.",
            param="MODEL_THRESHOLD",
        )
    if use_threshold and not io.probabilities:
        raise GeoSegError(
            "MODEL_THRESHOLD: the model returns logits, not probabilities, so its threshold does not apply.",
            param="MODEL_THRESHOLD",
        )
    return ClassRule(io.probabilities, io.single, io.threshold if use_threshold else None)


class FiniteOutputs:
    """The one check of what the model returns: NaN or ±inf logits (a broken or overflowing model)
    must not become class 0 and NaN probabilities. Such pixels are written as nodata (255, and
    PROB_NODATA) and counted; `verdict` refuses a run where no valid pixel got a finite output and
    warns with the count otherwise."""

    def __init__(self) -> None:
        self.valid = 0  # pixels with valid input
        self.bad = 0  # of those, pixels whose output is not finite in every class

    def mask(self, tile: np.ndarray, invalid: np.ndarray) -> np.ndarray:
        """Pixels of `tile` [classes, h, w] with a non-finite output among the valid ones."""
        return self.count(~np.isfinite(tile).all(axis=0), invalid)

    def count(self, nonfinite: np.ndarray, invalid: np.ndarray) -> np.ndarray:
        """`mask` for pixels whose output is already known to be non-finite (a batch's, at once)."""
        bad = nonfinite & ~invalid
        self.valid += int(invalid.size - np.count_nonzero(invalid))
        self.bad += int(np.count_nonzero(bad))
        return bad

    def verdict(self) -> str | None:
        """GeoSegError when every valid pixel's output was non-finite; the warning text when some were."""
        if self.bad and self.bad == self.valid:
            raise GeoSegError(
                "MODEL: the model returned NaN or infinite values for every pixel, so there is no "
                "result; nothing was written. The model is broken (e.g. diverged training) or does "
                "not suit this input's values.",
                param="MODEL",
            )
        if self.bad:
            return (
                f"The model returned NaN or infinite values for {self.bad} of {self.valid} pixels "
                f"({100 * self.bad / self.valid:.2g} %); they are nodata (255) in the output."
            )
        return None


def _argmax_channels(scores: np.ndarray) -> np.ndarray:
    """Arg-max over the classes of a batch [n, k, h, w] as uint8 [n, h, w], the first maximum as
    np.argmax: k vectorised comparisons, about twice as fast as np.argmax(axis=1), which copies the
    batch to make that axis the last. (Non-finite pixels differ, but those are nodata anyway.)"""
    best = scores[:, 0].copy()
    idx = np.zeros(best.shape, dtype=np.uint8)
    more = np.empty(best.shape, dtype=bool)
    k = scores.shape[1]
    for c in range(1, k):
        np.greater(scores[:, c], best, out=more)
        idx[more] = c
        if c + 1 < k:
            np.maximum(best, scores[:, c], out=best)
    return idx


def _batch_channels(rule: ClassRule, scores: np.ndarray) -> np.ndarray:
    """`rule.channels` of every tile of a batch [n, k, h, w] at once: [n, h, w]."""
    if rule.single or rule.threshold is not None or scores.shape[1] > 256:
        return rule.channels(np.moveaxis(scores, 1, 0))
    return _argmax_channels(scores)


def _kept(a: np.ndarray, xs: list[int], keep: list[tuple[int, int]], c0: int, out: np.ndarray) -> np.ndarray:
    """Each tile's kept columns of `a` [n, ..., columns c0…] side by side in `out` [..., span of `keep`]."""
    left = keep[0][0]
    for j, (x, (x0, x1)) in enumerate(zip(xs, keep, strict=True)):
        out[..., x0 - left : x1 - left] = a[j, ..., x0 - x - c0 : x1 - x - c0]
    return out


@with_gdal_exceptions  # a pipeline thread: GDAL ≥ 3.7 keeps the exception mode per thread
def _write_strips(
    outbox: Pipe[tuple[_Batch, np.ndarray]],
    tiling: Tiling,
    width: int,
    values: np.ndarray,
    out_rows: PyramidWriter,
    prob_rows: PyramidWriter | None,
    finite: FiniteOutputs | None = None,
    rule: ClassRule | None = None,
) -> None:
    """Writer stage: arg-max (and softmax) of each batch's kept rows at once, each tile's kept span
    placed into its strip; whole strips go to the output files (and their overviews) in order.
    Non-finite outputs become nodata."""
    finite = finite or FiniteOutputs()
    rule = rule or ClassRule()
    k = len(values)
    classes = probs = None
    while (item := outbox.get()) is not END:
        b, logits = item
        oy, (y0, y1) = tiling.ys[b.strip], tiling.keep_y[b.strip]
        if classes is None:
            classes = np.empty((y1 - y0, width), dtype=np.uint8)
            probs = np.empty((k, y1 - y0, width), dtype=np.float32) if prob_rows else None
        xs = tiling.xs[b.first : b.first + len(logits)]
        keep = tiling.keep_x[b.first : b.first + len(xs)]
        c0 = min(x0 - x for x, (x0, _) in zip(xs, keep, strict=True))
        c1 = max(x1 - x for x, (_, x1) in zip(xs, keep, strict=True))
        scores = logits[:, :, y0 - oy : y1 - oy, c0:c1]  # every kept column of the batch, and a few more
        left, right = keep[0][0], keep[-1][1]
        shape = (y1 - y0, right - left)
        invalid = ~b.valid[y0 - oy : y1 - oy, left - b.left : right - b.left]
        nonfinite = _kept(~np.isfinite(scores).all(axis=1), xs, keep, c0, np.empty(shape, dtype=bool))
        invalid |= finite.count(nonfinite, invalid)
        channels = _kept(_batch_channels(rule, scores), xs, keep, c0, np.empty(shape, dtype=np.intp))
        cls = classes[:, left:right]
        np.take(values, channels, out=cls)
        cls[invalid] = MASK_NODATA
        if probs is not None:
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf pixels: nodata just below
                pr = rule.probabilities_of_batch(scores)
            dst = _kept(pr, xs, keep, c0, probs[:, :, left:right])
            dst[:, invalid] = PROB_NODATA
        if b.last:
            out_rows.write(classes[None])
            if prob_rows is not None and probs is not None:  # both set together
                prob_rows.write(probs)
            classes = probs = None
    out_rows.close()
    if prob_rows is not None:
        prob_rows.close()


class _Inference:
    """Runs the model on a batch in pieces of the current batch size; an out-of-memory error
    (real, or the simulated one of a memory budget) halves it and retries the same tiles."""

    def __init__(
        self,
        engine: Backend,
        batch_size: int,
        tile_bytes: float,
        budget_mb: float,
        tta: str = "none",
        to_probabilities: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.engine, self.batch_size = engine, batch_size  # model inputs per run (tiles × TTA views)
        self.tile_bytes, self.budget_mb = tile_bytes, budget_mb
        self.tta, self.to_probabilities = tta, to_probabilities or softmax

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for tiles `x`; with TTA the mean probabilities of their views (core/tta.py)."""
        if self.tta == "none":
            return self._in_pieces(x)
        return with_views(x, self.tta, self._in_pieces, self.to_probabilities)

    def _in_pieces(self, x: np.ndarray) -> np.ndarray:
        parts, i = [], 0
        while i < len(x):
            out, n = retry_halving_batch(
                partial(self._run_from, x, i), min(self.batch_size, len(x) - i), "segmentation", self._smaller
            )
            parts.append(out)
            i += n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_from(self, x: np.ndarray, start: int, n: int) -> np.ndarray:
        return self._run(x[start : start + n])

    def _run(self, x: np.ndarray) -> np.ndarray:
        check_budget(len(x) * self.tile_bytes, self.budget_mb, f"A batch of {len(x)} tiles")
        return self.engine(x)

    def _smaller(self, batch: int) -> None:
        self.batch_size = batch


def tile_memory_bytes(engine: Backend, card: ModelCard, chip: int) -> float:
    """Memory one tile of a batch needs during inference: its input, the network's activations
    (measured per pixel on a small probe, an upper bound: every intermediate counted) and logits."""
    return tile_bytes(card, chip, engine.activation_bytes_per_pixel(card.in_channels))


def default_budget_mb(engine: Backend) -> float:
    """Without a budget, a batch may use half of the GPU's free memory, or a quarter of the RAM
    still available (the rest is for the reader, the writer and everything else running)."""
    if engine.on_cuda:
        try:
            import torch

            free, _ = torch.cuda.mem_get_info()
            return 0.5 * free / 1e6
        except Exception:  # noqa: BLE001  (onnxruntime on CUDA without a CUDA torch)
            return 2000.0
    try:
        with open("/proc/meminfo") as f:
            avail: float = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):  # not Linux
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (AttributeError, OSError, ValueError):  # Windows: no sysconf
            avail = 8e9
    return 0.25 * avail / 1e6


def choose_batch_size(
    engine: Backend, card: ModelCard, chip: int, requested: int, budget_mb: float
) -> tuple[int, float]:
    """(batch size, bytes per tile): `requested`, or with 0 the most tiles that fit the budget
    (at least 1, at most what still pays off on the device). Bytes are 0 when nothing needs them."""
    if requested > 0 and budget_mb <= 0:
        return requested, 0.0
    per_tile = tile_memory_bytes(engine, card, chip)
    if requested > 0:
        return requested, per_tile
    budget = budget_mb if budget_mb > 0 else default_budget_mb(engine)
    cap = MAX_AUTO_BATCH["cuda" if engine.on_cuda else "cpu"]
    batch = max(1, min(cap, int(budget * 1e6 // per_tile)))
    log.info(
        "Batch size %d chosen automatically (about %.0f MB per tile, budget %.0f MB).", batch, per_tile / 1e6, budget
    )
    return batch, per_tile


# Complexity kept: the segmentation pipeline's wiring (reader, inference, writer threads, optional probability
# output, cleanup on stop); splitting it would pass a dozen locals around.
def _predict(  # noqa: C901
    ds: gdal.Dataset,
    info,
    tiling: Tiling,
    infer: _Inference,
    card: ModelCard,
    out_path: str,
    prob_path: str | None,
    batch_size: int,
    progress: Progress,
    cancelled: IsCancelled,
    rule: ClassRule | None = None,
    bands: list[int] | None = None,
    source: gdal.Dataset | None = None,
    part: tuple[RasterInfo, FiniteOutputs] | None = None,
) -> str | None:
    """Stream strips of tiles through the model into the (temporary) output files; returns the
    warning about non-finite model outputs, if any (none finite at all: GeoSegError).

    `part` (core.distributed): the files cover only the kept rows of `tiling`'s strips, on that
    RasterInfo's grid, and the non-finite outputs are counted into that FiniteOutputs, whose verdict
    the caller gives once all parts are done.

    Three stages overlap: a reader thread reads and normalises batch windows, this thread runs
    the model, a writer thread takes the arg-max and writes whole strips (GDAL, numpy and both
    backends release the GIL). Bounded queues keep at most a few batches in flight; an error in
    any stage stops the others and is raised here, and the caller removes the partial files.
    """
    values = np.array([c.value for c in card.classes], dtype=np.uint8)
    mean = np.asarray(card.normalization.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(card.normalization.std, dtype=np.float32)[:, None, None]
    target, finite = part if part else (info, FiniteOutputs())
    out = _new_map(out_path, target, card, False)
    prob = _new_map(prob_path, target, card, True) if prob_path else None
    stop = threading.Event()
    inbox: Pipe[_Batch] = Pipe(stop)
    outbox: Pipe[tuple[_Batch, np.ndarray]] = Pipe(stop)
    stages: list[Stage] = []
    out_rows = prob_rows = None
    try:
        out_rows, prob_rows = PyramidWriter(out), PyramidWriter(prob) if prob else None
        rows = (out_rows, prob_rows)  # the writer stage's, typed as set here (not as reset below)

        def write() -> None:
            try:
                _write_strips(outbox, tiling, info.width, values, rows[0], rows[1], finite, rule)
            except (Stop, GeoSegError):
                raise
            except Exception as e:  # noqa: BLE001  (GDAL write errors: disk full, permissions, …)
                raise GeoSegError(f"OUTPUT: writing the result failed ({first_line(e, 300)}).") from None

        stages = [
            Stage(
                "geoseg-read",
                lambda: _read_batches(ds, info, tiling, batch_size, mean, std, inbox, bands, source),
                stop,
            ),
            Stage("geoseg-write", write, stop),
        ]
        for s in stages:
            s.start()
        done = 0
        try:
            while (batch := inbox.get()) is not END:
                if cancelled():
                    raise Cancelled()
                outbox.put((batch, infer(batch.x)))
                done += len(batch.x)
                progress(0.97 * done / tiling.tiles)
            outbox.put(END)
            stages[1].join()
        except Stop:
            pass  # a stage failed: its error is raised below
        if cancelled():
            raise Cancelled()
    finally:
        stop.set()
        for s in stages:
            s.join()
            s.work = lambda: None  # drop the stage's closure (and the arrays it holds)
        out_rows = prob_rows = out = prob = None  # close (flush) before the files are renamed or removed
    for s in stages:
        if s.error is not None:
            raise s.error
    warning = None if part else finite.verdict()
    if warning:
        log.warning(warning)
    progress(1.0)
    return warning


def _refuse_unusable_input(ds: gdal.Dataset, info: RasterInfo) -> None:
    """A raster without a valid pixel would give an empty map. (A degree raster is read on the
    working grid: core.resample.)"""
    from .raster import any_valid_pixel

    if not any_valid_pixel(ds, info):
        raise GeoSegError(
            "INPUT: every pixel is nodata (its nodata value, NaN or masked), so there is nothing to " "segment."
        )


def _model_bands(model: OpenedModel, info: RasterInfo) -> list[int] | None:
    """0-based raster bands fed to the model (None: all of them, in order). A raster may have more
    bands than the model only for a model without a GeoSeg card, which reads its bands (by default
    the first C, e.g. RGB of an RGBA orthophoto) as Deepness does."""
    card = model.card
    fits = model.foreign and max(card.bands) <= info.band_count
    if info.band_count != card.in_channels and not fits:
        plural = "s" if info.band_count != 1 else ""
        raise GeoSegError(
            f"INPUT has {info.band_count} band{plural}, but the model was trained on "
            f"{card.in_channels} (bands {list(card.bands)}); use a raster with the same bands."
        )
    if list(card.bands) == list(range(1, info.band_count + 1)):
        return None
    log.info("The model reads bands %s of the raster's %d.", list(card.bands), info.band_count)
    return [b - 1 for b in card.bands]


def _check_fixed_size(p: SegmentParams, model: OpenedModel) -> None:
    """A model without a GeoSeg card whose input size is fixed runs at that size only."""
    fixed = model.io.fixed_size
    if model.foreign and fixed and p.chip_size and p.chip_size != fixed:
        raise GeoSegError(
            f"CHIP_SIZE {p.chip_size}: the model's input is fixed at {fixed} × {fixed} pixels; leave "
            f"CHIP_SIZE empty or set it to {fixed}.",
            param="CHIP_SIZE",
        )


@dataclass(frozen=True)
class _Grid:
    """The input raster and the working grid the model reads it on (core.resample)."""

    plan: GridPlan
    input_ds: gdal.Dataset
    input_info: RasterInfo
    back: bool  # write the maps back onto the input's grid (a warp, and OUTPUT_GRID 0)


def _working_grid(p: SegmentParams, card: ModelCard, ds: gdal.Dataset, info: RasterInfo, bands: list[int] | None):
    """(dataset, info, bands, grid) the model reads: the raster itself, or its warped VRT."""
    plan = plan_grid(card, info, p.resolution, p.pixel_size, p.output_grid, p.resampling)
    log.info("Working grid: %s", plan.message)
    grid = _Grid(plan, ds, info, plan.warp and p.output_grid == "input")
    if not plan.warp:
        return ds, info, bands, grid
    vrt, winfo = warped_source(ds, info, plan, p.resampling)
    return vrt, winfo, bands if bands is not None else list(range(info.band_count)), grid


@with_gdal_exceptions
def check_params(p: SegmentParams) -> OpenedModel:
    """The checks of `preflight` that need no raster: values, outputs, the model and its card. The dialog
    runs them before copying a layer GDAL cannot read (adapter.layers), and `preflight` after it."""
    _validate(p)
    model = read_model(p.model_path, p.card_path, p.output_index)
    class_rule(model.io, p.model_threshold)  # refuses MODEL_THRESHOLD without a threshold
    _check_fixed_size(p, model)
    return model


def _tiled_source(p: SegmentParams, model: OpenedModel) -> tuple[gdal.Dataset, RasterInfo, list[int] | None, _Grid]:
    """The dataset the tiles are read from (the raster, clipped to EXTENT, or its warped VRT), its info,
    the bands the model reads and the grid; refuses a raster without the model's bands or valid pixels."""
    ds = open_raster(p.input_path)
    if p.extent:
        ds = clip_to_extent(ds, p.extent)
    info = raster_info(ds, p.input_path)
    bands = _model_bands(model, info)
    _refuse_unusable_input(ds, info)
    return _working_grid(p, model.card, ds, info, bands)


@with_gdal_exceptions
def tiling_plan(p: SegmentParams) -> TilingPlan:
    """The tiling `segment` would use for `p` (core.tiling; `describe` words it), without checking the
    outputs: what a dialog shows while the user fills it in."""
    model = read_model(p.model_path, p.card_path, p.output_index)
    _, info, _, _ = _tiled_source(p, model)
    return _resolve(p, model.card, model.io, info)


@with_gdal_exceptions
def _preflight(p: SegmentParams) -> tuple[OpenedModel, gdal.Dataset, RasterInfo, Tiling, list[int] | None, _Grid]:
    """`preflight`, also returning how to run the model, which raster bands it reads (of the working
    dataset: the raster, or its warped VRT, whose alpha band is never read as data) and the grid."""
    model = check_params(p)
    card = model.card
    ds, info, bands, grid = _tiled_source(p, model)
    plan = _resolve(p, card, model.io, info)
    tiling = make_tiling(info.width, info.height, plan.chip, plan.stride_x, plan.stride_y, plan.crop)
    tiling = replace(tiling, plan=plan)
    log.info("Tiling: %s", describe(plan))
    known = plan.locality.radius if plan.locality and plan.locality.local else None
    radius = known if known is not None else card.recommended.receptive_field_radius if card.recommended else None
    if radius is not None and plan.crop < radius:
        log.info(
            "CROP %d is below the model's receptive-field radius %d: tiles may differ slightly from "
            "whole-image inference near their seams.",
            plan.crop,
            radius,
        )
    return model, ds, info, tiling, bands, grid


def preflight(p: SegmentParams) -> tuple[ModelCard, gdal.Dataset, RasterInfo, Tiling]:
    """Every check that needs no pixel: parameters, outputs, card, band count, tiling (of the working
    grid; `info` is the warped VRT's when the raster is resampled; `tiling.plan` says how it was chosen).
    Choosing a default tiling runs the model once on the CPU, on two blank tiles, the first time a model
    file is seen in the process (core.tiling). The dialogs call it before starting a task; `segment`
    starts with it."""
    model, ds, info, tiling, _, _ = _preflight(p)
    return model.card, ds, info, tiling


@dataclass
class _Engine:
    """The model as one process runs it (segment in-process, or a cluster worker: core.distributed):
    the backend, batched inference (an out-of-memory error lowers its batch size) and the class rule."""

    backend: Backend
    infer: _Inference
    rule: ClassRule
    tiles_per_batch: int
    batch_size: int  # as chosen at the start

    def summary(self) -> tuple[str, str, int, int]:
        """(backend, provider, batch size at the start, at the end) for SegmentResult."""
        return self.backend.name, self.backend.provider, self.batch_size, self.infer.batch_size


def _pinned(p: SegmentParams, tiling: Tiling) -> SegmentParams:
    """`p` with this run's tiling (and batch) written in: a worker must cut the tiles the client planned
    its parts on, whatever memory it has free (the default chip follows the memory budget)."""
    batch = p.batch_size
    if batch and tiling.plan is not None and tiling.plan.rule == "local":
        batch = local_batch(batch, tiling.chip, _runs_on_cuda(p))
    return replace(
        p, chip_size=tiling.chip, stride_x=tiling.stride_x, stride_y=tiling.stride_y, crop=tiling.crop, batch_size=batch
    )


def _open_engine(p: SegmentParams, model: OpenedModel, tiling: Tiling) -> _Engine:
    card, io, chip = model.card, model.io, tiling.chip
    engine = open_backend(p.model_path, card, p.backend, p.device, chip, io)
    budget = memory_budget_mb(p.memory_budget_mb)
    requested = io.fixed_batch or p.batch_size
    if requested and not io.fixed_batch and tiling.plan is not None and tiling.plan.rule == "local":
        requested = local_batch(requested, chip, engine.on_cuda)  # larger tiles, as many pixels a batch
        if requested != p.batch_size:
            log.info(
                "Batch of %d tiles of %d px (BATCH_SIZE %d counts 256 px tiles on the CPU).",
                requested,
                chip,
                p.batch_size,
            )
    batch_size, tile_bytes = choose_batch_size(engine, card, chip, requested, budget)
    if io.fixed_batch and p.batch_size != io.fixed_batch:
        log.info("The model's batch size is fixed at %d; BATCH_SIZE %d is not used.", io.fixed_batch, p.batch_size)
    rule = class_rule(io, p.model_threshold)
    views = view_count(p.tta)
    infer = _Inference(engine, batch_size, tile_bytes, budget, p.tta, rule.probabilities_of_batch)
    if views > 1:  # a batch of B tiles runs as B × views model inputs; the averaged views are probabilities
        rule = ClassRule(True, rule.single, rule.threshold)
    return _Engine(engine, infer, rule, max(1, batch_size // views), batch_size)


@with_gdal_exceptions
def segment(
    p: SegmentParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> SegmentResult:
    """Segment `p.input_path` with `p.model_path`; raise GeoSegError (or Cancelled) on failure.

    With a Dask scheduler (SCHEDULER, or $DASK_SCHEDULER_ADDRESS) the tiles are predicted on its
    workers (core.distributed) and assembled here; everything before and after is the same."""
    from .distributed import ClusterPredict, Engine, scheduler_address  # dask itself only with a scheduler

    t0, started = time.perf_counter(), time.time()
    model, ds, info, tiling, bands, grid = _preflight(p)
    card, io = model.card, model.io
    remove_stale_outputs((p.output_path, p.probabilities_path, p.vector_path), started)  # of a killed run (SIGKILL)
    chip, sx, sy, crop = tiling.chip, tiling.stride_x, tiling.stride_y, tiling.crop  # as _preflight chose them
    warnings = compatibility_warnings(card, p.input_path, grid.input_info, grid=p.resolution == "raster")
    for w in warnings:
        log.warning(w)
    post = p.sieve > 0 or p.vector_path is not None
    predict_progress = _scaled(progress, 0.0, 0.85) if post else progress
    address = scheduler_address(p.scheduler)

    with ExitStack() as stack:  # all files appear complete, or not at all
        run: _Engine | ClusterPredict
        if address:  # the workers open the model; the rule here is only passed along
            engine = Engine(_preflight, _open_engine, _predict, FiniteOutputs, _new_map, PyramidWriter)
            run = stack.enter_context(ClusterPredict(_pinned(p, tiling), address, info, tiling, card, engine))
            predict: Callable[..., str | None] = run
            tiles_per_batch, rule = 0, class_rule(io, p.model_threshold)
        else:
            run = _open_engine(p, model, tiling)
            predict = partial(_predict, ds, info, tiling, run.infer, card)
            tiles_per_batch, rule = run.tiles_per_batch, run.rule
        out_tmp = stack.enter_context(staged_file(p.output_path, "OUTPUT"))
        prob_tmp = (
            stack.enter_context(staged_file(p.probabilities_path, "OUTPUT_PROBABILITIES"))
            if p.probabilities_path
            else None
        )
        vector_tmp = stack.enter_context(staged_file(p.vector_path, "OUTPUT_VECTOR")) if p.vector_path else None
        nonfinite = _predict_on_grid(
            grid,
            predict,
            (out_tmp, prob_tmp),
            (tiles_per_batch, predict_progress, cancelled, rule, bands),
            card,
        )
        _clean_and_vectorize(p, card, out_tmp, vector_tmp, _scaled(progress, 0.85, 0.15), cancelled)
    if nonfinite:
        warnings.append(nonfinite)
    set_category_names(p.output_path, card.class_names)  # after the rename
    seconds = time.perf_counter() - t0
    backend, provider, batch_size, final_batch = run.summary()
    log.info(
        "Segmented %d tiles (%d × %d px, chip %d, stride %d × %d, crop %d, batch %d) in %.1f s.",
        tiling.tiles,
        info.width,
        info.height,
        chip,
        sx,
        sy,
        crop,
        final_batch,
        seconds,
    )
    return SegmentResult(
        os.path.abspath(p.output_path),
        os.path.abspath(p.probabilities_path) if p.probabilities_path else None,
        card,
        backend,
        provider,
        tiling.tiles,
        seconds,
        warnings,
        batch_size,
        final_batch,
        os.path.abspath(p.vector_path) if p.vector_path else None,
    )


def _predict_on_grid(
    grid: _Grid,
    predict: Callable[..., str | None],
    outputs: tuple[str, str | None],
    args: tuple,
    card: ModelCard,
) -> str | None:
    """`predict(out, prob, *args)` (the bound `_predict`) on the working grid, straight into the staged
    outputs, or (OUTPUT_GRID 0 with a warp) into hidden working-grid files beside them that are then
    warped nearest-neighbour onto the input's grid, strip by strip, and removed."""
    source = grid.input_ds if grid.plan.warp else None
    if not grid.back:
        return predict(*outputs, *args, source=source)
    batch, progress, cancelled, rule, bands = args
    work = [None if o is None else os.path.splitext(o)[0] + ".working.tif" for o in outputs]
    try:
        nonfinite = predict(*work, batch, _scaled(progress, 0.0, 0.85), cancelled, rule, bands, source=source)
        steps = [(w, o, prob) for prob, (w, o) in enumerate(zip(work, outputs, strict=True)) if w and o]
        for i, (w, o, prob) in enumerate(steps):
            _write_back(
                w,
                o,
                grid.input_info,
                card,
                bool(prob),
                _scaled(progress, 0.85 + 0.15 * i / len(steps), 0.15 / len(steps)),
                cancelled,
            )
    finally:
        for tmp in work:
            if tmp and os.path.exists(tmp):
                gdal.GetDriverByName("GTiff").Delete(tmp)
    progress(1.0)
    return nonfinite


def _write_back(
    src: str, dst: str, grid: RasterInfo, card: ModelCard, prob: bool, progress: Progress, cancelled: IsCancelled
) -> None:
    """A map on the working grid onto the input's grid: nearest neighbour (classes, and probabilities
    too, so that they agree with the class map pixel for pixel), nodata kept, styled and with the
    overviews streamed like a map written directly."""
    out = _new_map(dst, grid, card, prob)
    try:
        rows: PyramidWriter | None = PyramidWriter(out)
        assert rows is not None
        warp_to_grid(src, rows.write, grid, PROB_NODATA if prob else MASK_NODATA, "nearest", progress, cancelled)
        rows.close()
    finally:
        rows = out = None  # close (flush) before the file is renamed or removed


def _scaled(progress: Progress, start: float, span: float) -> Progress:
    return lambda f: progress(start + span * f)


def _clean_and_vectorize(
    p: SegmentParams,
    card: ModelCard,
    out_tmp: str,
    vector_tmp: str | None,
    progress: Progress,
    cancelled: IsCancelled,
) -> None:
    """The finished (still staged) class map: SIEVE in place, then its polygons into OUTPUT_VECTOR."""
    from .regions import polygonize, sieve_in_place

    if p.sieve > 0:
        sieve_in_place(out_tmp, p.sieve, _scaled(progress, 0.0, 0.4 if vector_tmp else 1.0), cancelled)
    if vector_tmp:
        start = 0.4 if p.sieve > 0 else 0.0
        n = polygonize(out_tmp, vector_tmp, card.class_names, _scaled(progress, start, 1.0 - start), cancelled)
        log.info("OUTPUT_VECTOR: %d polygons.", n)
    progress(1.0)
