"""Segment's streaming stages: a reader that decodes each input block once and cuts normalised
batches, batched inference that halves its batch on out-of-memory, and a writer that takes the
arg-max of whole batches and streams finished strips (and their overviews) into the output files.

Three threads joined by bounded queues (core.pipeline), so a run goes at the speed of the model;
core.predict decides what to run (grid, tiling, model, batch size) and core.distributed runs the
same stages on a cluster's workers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from osgeo import gdal

from .backends import Backend
from .card import CardClass, ModelCard
from .errors import Cancelled, GeoSegError, IsCancelled, Progress, first_line
from .foreign import ModelIO
from .gdalx import with_gdal_exceptions
from .grid import Tiling, Window
from .memory import check_budget, retry_halving_batch
from .pipeline import END, Pipe, Stage, Stop
from .raster import MASK_NODATA, BlockGrid, RasterInfo, read_window
from .resample import flush
from .tta import with_views

log = logging.getLogger("geoseg")

PROB_NODATA = -1.0
# GDAL's compression threads for every map: a class map compressed in the writer thread alone was measured
# 30 % slower with a tiny model whose map hardly compresses (issue 18), for a few % gained with a smooth one.
CREATE_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]


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


def new_map(path: str, info, card: ModelCard, prob: bool) -> gdal.Dataset:
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


READ_COLUMNS = 1024  # columns per GDAL read (whole blocks): bounds GDAL's block cache, spreads the reads
MAX_ALIGN_ROWS = 1024  # taller blocks (a single-strip file) are read row range by row range instead


Strip = list[tuple[np.ndarray, np.ndarray]]  # a strip's pieces (pixels, valid), top to bottom: _RowCache.strip
Read = tuple[int, int, int, int]  # rows [y, y + h) of columns [x, end): (y, h, x, end), whole blocks


class _RowCache:
    """Full-width rows of the raster (in its own data type, the model's bands only) from the current
    strip's top row down: each block is decoded once per run.

    Consecutive strips share chip − stride rows, and a tile row ends inside a block row, so rows are
    read to the next block boundary, in whole blocks of at most READ_COLUMNS columns, then GDAL's
    cache is flushed (those blocks are never needed again). The next strip's rows are read a chunk
    at a time between the current strip's batches (`plan`, `fetch`), so the reader never stalls the
    model for a whole block row; rows a strip still lacks (the first strip's, all of them) are read
    only as far as its next batch reaches (`upto`), so the model starts after a few blocks, not a row.

    Blocks are those GDAL decodes the pixels from: the raster's, also under an EXTENT window whose
    edges cut through them (RasterInfo.blocks).

    The buffer is a ring: raster row y lives in buffer row y mod R, so the rows two strips share are
    never moved; a strip that wraps around the end is handed out as two pieces. A read split at the
    end of the ring reads both parts before GDAL's cache is flushed, so it still decodes each block once.
    Memory: R ≈ chip + stride + one block row of rows, the raster's width.
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
        bw, bh, bx, by = info.blocks or BlockGrid(*ds.GetRasterBand(1).GetBlockSize())
        self.align, self.phase = (bh, -by % bh) if 1 < bh <= MAX_ALIGN_ROWS else (1, 0)
        columns = max(bw, READ_COLUMNS // bw * bw) if bw < info.width else info.width
        first = bx % columns if bw < info.width else 0  # where the first chunk ends (a block edge), or 0
        starts = [0, *range(first or columns, info.width, columns)]
        self.columns = list(zip(starts, [*starts[1:], info.width], strict=True))  # (x, end): whole blocks each
        step = max((b - a for a, b in zip(tiling.ys, tiling.ys[1:], strict=False)), default=0)
        need = self.chip + min(step, self.chip) + self.align - 1
        self.ring = -(-need // self.align) * self.align
        n = len(bands) if bands is not None else info.band_count
        width = max(info.width, self.chip)  # a raster narrower than a chip: padding on the right
        self.pixels = np.zeros((n, self.ring, width), dtype=info.dtype)
        self.valid = np.zeros((self.ring, width), dtype=bool)
        self.top = self.planned = 0  # the current strip's first raster row; the first row not yet queued
        self.pending: list[Read] = []  # reads queued for the next strip
        self.missing: list[Read] = []  # reads the current strip still needs, left to right

    def strip(self, oy: int) -> Strip:
        """Rows [oy, oy + chip) as one or two pieces (pixels [bands, h, width], valid [h, width]),
        top to bottom: views into the cache, valid until the next call, complete as far as `upto`."""
        self.upto(self.info.width)
        self.fetch(len(self.pending))
        self.top, self.planned = oy, max(self.planned, oy)  # rows above oy: never needed (a cluster part's 1st strip)
        self.plan(oy)
        self.missing, self.pending = self.pending, []
        for y in range(max(self.planned, oy), oy + self.chip):  # below a raster lower than one chip: padding
            self.valid[y % self.ring] = False
        first = oy % self.ring
        if first + self.chip <= self.ring:
            return [(self.pixels[:, first : first + self.chip], self.valid[first : first + self.chip])]
        rest = first + self.chip - self.ring
        return [(self.pixels[:, first:], self.valid[first:]), (self.pixels[:, :rest], self.valid[:rest])]

    def upto(self, x: int) -> None:
        """Complete the current strip's rows left of column x."""
        n = next((i for i, (_, _, x0, _) in enumerate(self.missing) if x0 >= x), len(self.missing))
        self._do(self.missing[:n])
        self.missing = self.missing[n:]

    def plan(self, oy: int) -> None:
        """Queue the reads that complete rows [oy, oy + chip), to the next block boundary, when they fit
        beside the current strip's rows."""
        y = self.planned
        end = min(-(-(oy + self.chip + self.phase) // self.align) * self.align - self.phase, self.info.height)
        if y < end and end - self.top <= self.ring:
            self.pending = [(y, end - y, x0, x1) for x0, x1 in self.columns]
            self.planned = end

    def fetch(self, count: int) -> None:
        """Do the first `count` queued reads."""
        self._do(self.pending[:count])
        self.pending = self.pending[count:]

    def _do(self, reads: list[Read]) -> None:
        """Each read into the ring, GDAL's cache flushed after it (a read split at the ring's end: after
        both parts, so a block they share is decoded once)."""
        for y, h, x, end in reads:
            w = end - x
            first = y % self.ring
            split = min(h, self.ring - first)  # rows before the end of the ring
            try:
                self._read(x, y, w, split, first)
                if split < h:
                    self._read(x, y + split, w, h - split, 0)
                flush(self.ds, *([self.source] if self.source is not None else []))
            except GeoSegError:
                raise
            except Exception as e:  # noqa: BLE001  (GDAL I/O and decoding errors of every kind)
                raise GeoSegError(
                    f"INPUT: GDAL could not read columns {x}-{x + w} of rows {y}-{y + h} "
                    f"of {self.info.path} ({first_line(e, 300)})."
                ) from None

    def _read(self, x: int, y: int, w: int, h: int, row: int) -> None:
        """Raster rows [y, y + h), columns [x, x + w), into buffer rows [row, row + h)."""
        rows, columns = slice(row, row + h), slice(x, x + w)
        if self.bands is None:  # decoded straight into the cache
            read_window(
                self.ds, self.info, Window(x, y, w, h), (self.pixels[:, rows, columns], self.valid[rows, columns])
            )
        else:  # every band's nodata counts: all bands read, the model's kept
            pixels, valid = read_window(self.ds, self.info, Window(x, y, w, h))
            self.pixels[:, rows, columns] = pixels[self.bands]
            self.valid[rows, columns] = valid
        if x + w >= self.info.width:
            self.valid[rows, self.info.width :] = False  # right of a raster narrower than a chip


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


def _tiles(
    strip: list[tuple[np.ndarray, np.ndarray]], origins: list[int], mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """Normalised tiles [n, bands, chip, chip] (float32) at `origins` of a strip (its pieces, top to
    bottom: _RowCache.strip), built straight from strided views of it (no per-tile copy):
    (pixel − mean) / std in float32, invalid pixels 0, the same arithmetic as one tile at a time."""
    chip = sum(pixels.shape[1] for pixels, _ in strip)
    x = np.empty((len(origins), strip[0][0].shape[0], chip, chip), dtype=np.float32)
    runs = [(i, j, slice(origins[i], origins[j - 1] + 1, step)) for i, j, step in _runs(origins)]
    window = slice(origins[0], origins[-1] + chip)
    top, holes = 0, []
    for pixels, valid in strip:
        rows = slice(top, top + pixels.shape[1])
        view = np.lib.stride_tricks.sliding_window_view(pixels, chip, axis=2)  # [bands, h, x, chip]
        for i, j, cols in runs:  # the data type's values as float32 first (a plain cast: twice as fast as
            np.copyto(x[i:j, :, rows], view[:, :, cols].transpose(2, 0, 1, 3), casting="unsafe")  # a ufunc's)
        if not valid[:, window].all():  # the usual case, all valid: no pass over the tiles below
            holes.append((rows, np.lib.stride_tricks.sliding_window_view(valid, chip, axis=1)))  # [h, x, chip]
        top = rows.stop
    np.subtract(x, mean, out=x)  # then float32 arithmetic in place
    np.divide(x, std, out=x)
    for rows, masks in holes:  # nodata → 0 (the mean); NaN pixels are invalid, so they become 0 too
        for i, j, cols in runs:
            np.copyto(x[i:j, :, rows], 0, where=~masks[:, cols].transpose(1, 0, 2)[:, None])
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
        strip = cache.strip(oy)
        if si + 1 < len(tiling.ys):
            cache.plan(tiling.ys[si + 1])
        for k, b in enumerate(starts):
            xs = tiling.xs[b : b + batch_size]
            cache.upto(xs[-1] + chip)
            x = _tiles(strip, xs, mean, std)
            window = np.concatenate([v[:, xs[0] : xs[-1] + chip] for _, v in strip])  # a copy: the writer's
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
    """The one check of what the model returns: a pixel without a usable score (NaN or +inf in any
    class, or −inf in every class: a broken or overflowing model) must not become class 0 and NaN
    probabilities. Such pixels are written as nodata (255, and PROB_NODATA) and counted; `verdict`
    refuses a run where no valid pixel got a usable output and warns with the count otherwise."""

    def __init__(self) -> None:
        self.valid = 0  # pixels with valid input
        self.bad = 0  # of those, pixels without a usable score

    def mask(self, tile: np.ndarray, invalid: np.ndarray) -> np.ndarray:
        """Pixels of `tile` [classes, h, w] without a usable score among the valid ones."""
        return self.count(~np.isfinite(tile.max(axis=0)), invalid)

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


def _argmax_channels(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max over the classes of a batch [n, k, h, w] as uint8 [n, h, w], the first maximum as
    np.argmax, and the highest score [n, h, w]: k vectorised comparisons, about twice as fast as
    np.argmax(axis=1), which copies the batch to make that axis the last. The highest score is NaN
    where any class's is (np.maximum keeps NaN), so it tells the non-finite pixels in one small
    pass. (Their arg-max differs from np.argmax's, but those pixels are nodata anyway.)"""
    best = scores[:, 0].copy()
    idx = np.zeros(best.shape, dtype=np.uint8)
    more = np.empty(best.shape, dtype=bool)
    step = np.empty(best.shape, dtype=np.uint8)
    for c in range(1, scores.shape[1]):
        np.greater(scores[:, c], best, out=more)
        np.multiply(more.view(np.uint8), c, out=step)  # idx < c so far: where class c is higher,
        np.maximum(idx, step, out=idx)  # max(idx, c) sets c (no slow masked assignment)
        np.maximum(best, scores[:, c], out=best)
    return idx, best


def _batch_channels(rule: ClassRule, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`rule.channels` of every tile of a batch [n, k, h, w] at once, [n, h, w], and the pixels
    without a usable score: NaN or +inf in any class, or −inf in all (a −inf class beside finite
    ones is only a class of probability 0)."""
    if rule.single or rule.threshold is not None or scores.shape[1] > 256:
        return rule.channels(np.moveaxis(scores, 1, 0)), ~np.isfinite(scores.max(axis=1))
    idx, best = _argmax_channels(scores)
    return idx, ~np.isfinite(best)


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
    identity = bool((values == np.arange(k)).all())
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
        channels, unusable = _batch_channels(rule, scores)
        invalid |= finite.count(_kept(unusable, xs, keep, c0, np.empty(shape, dtype=bool)), invalid)
        cls = classes[:, left:right]
        if identity and channels.dtype == np.uint8:  # class value = channel: placed as they are
            _kept(channels, xs, keep, c0, cls)
        else:
            np.take(values, _kept(channels, xs, keep, c0, np.empty(shape, dtype=np.intp)), out=cls)
        if invalid.any():
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


class Inference:
    """Runs the model on a batch in pieces of the current batch size; an out-of-memory error
    (real, or the simulated one of a memory budget) halves it and retries the same tiles.

    `lanes` (backends.model_lanes): copies of the model that run whole batches side by side, each
    with its share of the budget; `ordered` hands their results back in the reading order."""

    def __init__(
        self,
        engine: Backend,
        batch_size: int,
        tile_bytes: float,
        budget_mb: float,
        tta: str = "none",
        to_probabilities: Callable[[np.ndarray], np.ndarray] | None = None,
        lanes: Sequence[Backend] = (),
    ) -> None:
        self.engine = lanes[0] if lanes else engine  # one lane is the model itself
        self.batch_size = batch_size  # model inputs per run (tiles × TTA views)
        self.tile_bytes, self.budget_mb = tile_bytes, budget_mb
        self.tta, self.to_probabilities = tta, to_probabilities or softmax
        share = budget_mb / max(1, len(lanes))  # each lane holds a batch of its own
        clones = lanes if len(lanes) > 1 else ()
        self.lanes = [Inference(e, batch_size, tile_bytes, share, tta, to_probabilities) for e in clones]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for tiles `x`; with TTA the mean probabilities of their views (core/tta.py)."""
        if self.tta == "none":
            return self._in_pieces(x)
        return with_views(x, self.tta, self._in_pieces, self.to_probabilities)

    @property
    def final_batch_size(self) -> int:
        """The batch size the run ended with (the smallest of its lanes')."""
        return min(lane.batch_size for lane in self.lanes or [self])

    def ordered(self, inbox: Pipe[_Batch]) -> Generator[tuple[_Batch, np.ndarray], None, None]:
        """Each batch from `inbox` with the model's output, in the order read. With lanes, every lane
        computes a batch at once (one more waits for the first free lane) while the oldest is awaited."""
        if not self.lanes:
            while (batch := inbox.get()) is not END:
                yield batch, self(batch.x)
            return
        free: queue.SimpleQueue[Inference] = queue.SimpleQueue()
        for lane in self.lanes:
            free.put(lane)

        def run(x: np.ndarray) -> np.ndarray:
            lane = free.get()
            try:
                return lane(x)
            finally:
                free.put(lane)

        pending: deque[tuple[_Batch, Future[np.ndarray]]] = deque()
        with ThreadPoolExecutor(len(self.lanes), thread_name_prefix="geoseg-model") as pool:
            try:
                while (batch := inbox.get()) is not END:
                    pending.append((batch, pool.submit(run, batch.x)))
                    if len(pending) > len(self.lanes):
                        oldest, result = pending.popleft()
                        yield oldest, result.result()
                while pending:
                    oldest, result = pending.popleft()
                    yield oldest, result.result()
            finally:  # stopped or failed: drop the batches not started (a started one ends with its run)
                for _, result in pending:
                    result.cancel()

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


# Complexity kept: the segmentation pipeline's wiring (reader, inference, writer threads, optional probability
# output, cleanup on stop); splitting it would pass a dozen locals around.
def stream_tiles(  # noqa: C901
    ds: gdal.Dataset,
    info,
    tiling: Tiling,
    infer: Inference,
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
    out = new_map(out_path, target, card, False)
    prob = new_map(prob_path, target, card, True) if prob_path else None
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
        batches = infer.ordered(inbox)
        try:
            for batch, scores in batches:
                if cancelled():
                    raise Cancelled()
                outbox.put((batch, scores))
                done += len(batch.x)
                progress(0.97 * done / tiling.tiles)
            outbox.put(END)
            stages[1].join()
        except Stop:
            pass  # a stage failed: its error is raised below
        finally:
            batches.close()  # the lanes' batches in progress end before the files are closed
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
