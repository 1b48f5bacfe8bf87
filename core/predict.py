"""Tiled prediction (geoInfer done right): any raster → georeferenced class map.

Tiles lie on the chip grid (origins 0, s, 2s, …, the last shifted to the raster edge, no
duplicates). Each tile contributes only its centre: CROP pixels are dropped at every tile edge
that is not the raster's own edge, and neighbouring kept regions meet exactly, so every pixel
is written once. For a model whose receptive field reaches no further than CROP pixels the
result equals whole-image inference.

The raster is streamed one strip of tiles at a time (memory does not grow with its height),
tiles are predicted in batches, and the output is written under a temporary name and renamed
only when complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, osr

from .backends import open_backend, read_model_card
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .grid import Window, axis_origins
from .raster import MASK_NODATA, open_raster, raster_info, read_window, set_category_names
from .staging import check_new_file, staged_file

log = logging.getLogger("geoseg")

PROB_NODATA = -1.0
CREATE_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]

__all__ = ["SegmentParams", "SegmentResult", "compatibility_warnings", "preflight", "read_model_card", "segment"]


@dataclass(frozen=True)
class SegmentParams:
    """Everything segmentation needs; built by the dialog, the algorithm and the CLI alike."""

    input_path: str
    model_path: str
    output_path: str
    probabilities_path: str | None = None
    chip_size: int | None = None  # None: the card's chip_size
    stride_x: int | None = None  # None: chip // 2
    stride_y: int | None = None
    crop: int | None = None  # None: chip // 8
    batch_size: int = 8
    backend: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class SegmentResult:
    output_path: str
    probabilities_path: str | None
    card: dict
    backend: str
    provider: str
    tiles: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Tiling:
    """Tile origins per axis and the span [start, end) each tile keeps."""

    chip: int
    xs: list[int]
    ys: list[int]
    keep_x: list[tuple[int, int]]
    keep_y: list[tuple[int, int]]

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
        raise GeoSegError(f"CHIP_SIZE must be at least 8 pixels (got {chip}).")
    if crop < 0 or 2 * crop >= chip:
        raise GeoSegError(f"CROP must be at least 0 and less than half of CHIP_SIZE {chip} (got {crop}).")
    for name, stride in (("STRIDE_X", stride_x), ("STRIDE_Y", stride_y)):
        if stride < 1 or stride > chip - 2 * crop:
            raise GeoSegError(
                f"{name} ({stride}) must be between 1 and CHIP_SIZE − 2·CROP = {chip} − 2·{crop} = {chip - 2 * crop}, "
                "so that the kept tile centres meet without gaps.")
    xs, kx = keep_spans(width, chip, stride_x, crop)
    ys, ky = keep_spans(height, chip, stride_y, crop)
    return Tiling(chip, xs, ys, kx, ky)


def compatibility_warnings(card: dict, raster_path: str) -> list[str]:
    """Differences between the raster and the training data that may hurt the result."""
    info = raster_info(open_raster(raster_path), raster_path)
    out = []
    if info.band_count != card["in_channels"]:
        out.append(f"The raster has {info.band_count} bands, but the model was trained on {card['in_channels']}.")
    px = card.get("pixel_size")
    if px and any(abs(a - b) > 0.01 * abs(b) for a, b in zip(info.pixel_size, px, strict=False)):
        out.append(f"The raster's pixel size ({info.pixel_size[0]:g} × {info.pixel_size[1]:g}) differs from the "
                   f"training data's ({px[0]:g} × {px[1]:g}); resample it to the training resolution for best results.")
    crs = (card.get("crs") or {}).get("wkt")
    if crs and info.srs is not None:
        trained = osr.SpatialReference()
        trained.ImportFromWkt(crs)
        if not trained.IsSame(info.srs):
            name = (card.get("crs") or {}).get("authid") or trained.GetName()
            out.append(f"The raster's CRS ({info.srs.GetName()}) differs from the training data's ({name}).")
    return out


def _resolve(p: SegmentParams, card: dict) -> tuple[int, int, int, int]:
    chip = p.chip_size or int(card["chip_size"])
    crop = chip // 8 if p.crop is None else p.crop
    return chip, p.stride_x or chip // 2, p.stride_y or chip // 2, crop


def _validate(p: SegmentParams) -> None:
    if p.batch_size < 1:
        raise GeoSegError(f"BATCH_SIZE must be at least 1 (got {p.batch_size}).")
    for what, path in (("OUTPUT", p.output_path), ("OUTPUT_PROBABILITIES", p.probabilities_path)):
        if path is None:
            continue
        if not path.lower().endswith((".tif", ".tiff")):
            raise GeoSegError(f"{what} must be a GeoTIFF file name ending in .tif (got {path}).")
        check_new_file(path, what)
    if p.probabilities_path and os.path.abspath(p.probabilities_path) == os.path.abspath(p.output_path):
        raise GeoSegError("OUTPUT_PROBABILITIES must differ from OUTPUT.")


def _create(path: str, info, bands: int, gdal_type: int, extra: list[str]) -> gdal.Dataset:
    ds = gdal.GetDriverByName("GTiff").Create(path, info.width, info.height, bands, gdal_type, CREATE_OPTIONS + extra)
    ds.SetGeoTransform(info.geotransform)
    if info.wkt:
        ds.SetProjection(info.wkt)
    return ds


def _style_classes(band: gdal.Band, classes: list[dict]) -> None:
    """Colour table (inside the GeoTIFF), so any GIS shows the map in the card's colours."""
    table = gdal.ColorTable()
    for c in classes:
        h = c["color"].lstrip("#")
        table.SetColorEntry(c["value"], (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetNoDataValue(MASK_NODATA)


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
            RowWriter([b.GetOverview(li) for b in bands], ds.FlushCache) for li in range(len(self.levels))]
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


def _predict(ds: gdal.Dataset, info, tiling: Tiling, engine, card: dict, out_path: str, prob_path: str | None,
             batch_size: int, progress: Progress, cancelled: IsCancelled) -> None:
    """Stream strips of tiles through the model into the (temporary) output files."""
    chip = tiling.chip
    values = np.array([c["value"] for c in card["classes"]], dtype=np.uint8)
    mean = np.asarray(card["normalization"]["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(card["normalization"]["std"], dtype=np.float32)[:, None, None]
    k = len(values)
    out = _create(out_path, info, 1, gdal.GDT_Byte, [])
    prob = _create(prob_path, info, k, gdal.GDT_Float32, ["PREDICTOR=3"]) if prob_path else None
    try:
        _style_classes(out.GetRasterBand(1), card["classes"])
        for i, c in enumerate(card["classes"] if prob else []):
            prob.GetRasterBand(i + 1).SetDescription(c["name"])
            prob.GetRasterBand(i + 1).SetNoDataValue(PROB_NODATA)
        out_rows = PyramidWriter(out)
        prob_rows = PyramidWriter(prob) if prob else None
        done = 0
        for oy, (y0, y1) in zip(tiling.ys, tiling.keep_y, strict=True):
            classes = np.empty((y1 - y0, info.width), dtype=np.uint8)
            probs = np.empty((k, y1 - y0, info.width), dtype=np.float32) if prob else None
            for b in range(0, len(tiling.xs), batch_size):
                if cancelled():
                    raise Cancelled()
                xs = tiling.xs[b:b + batch_size]
                # one window per batch: arrays stay batch-sized whatever the raster's width
                left, right = xs[0], min(xs[-1] + chip, info.width)
                win = Window(left, oy, right - left, min(chip, info.height), max(0, chip - info.width),
                             max(0, chip - info.height))
                pixels, valid = read_window(ds, info, win)
                ds.FlushCache()  # the cache would otherwise hold a strip's width of blocks
                batch = np.stack([pixels[:, :, x - left:x - left + chip] for x in xs]).astype(np.float32)
                batch -= mean
                batch /= std
                batch *= np.stack([valid[:, x - left:x - left + chip] for x in xs])[:, None]  # nodata → 0 (the mean)
                logits = engine(batch)
                for j, (x, (x0, x1)) in enumerate(zip(xs, tiling.keep_x[b:b + batch_size], strict=True)):
                    tile = logits[j, :, y0 - oy:y1 - oy, x0 - x:x1 - x]
                    invalid = ~valid[y0 - oy:y1 - oy, x0 - left:x1 - left]
                    cls = values[tile.argmax(axis=0)]
                    cls[invalid] = MASK_NODATA
                    classes[:, x0:x1] = cls
                    if probs is not None:
                        pr = softmax(tile[None])[0]
                        pr[:, invalid] = PROB_NODATA
                        probs[:, :, x0:x1] = pr
                done += len(xs)
                progress(0.97 * done / tiling.tiles)
            out_rows.write(classes[None])
            if probs is not None:
                prob_rows.write(probs)
        out_rows.close()
        if prob_rows is not None:
            prob_rows.close()
        if cancelled():
            raise Cancelled()
        progress(1.0)
    finally:
        out = prob = None  # close (flush) before the files are renamed or removed


def preflight(p: SegmentParams) -> tuple[dict, gdal.Dataset, object, Tiling]:
    """Every check that needs no model run and no pixel: parameters, outputs, card, band count,
    tiling. The dialogs call it before starting a task; `segment` starts with it."""
    _validate(p)
    card = read_model_card(p.model_path)
    ds = open_raster(p.input_path)
    info = raster_info(ds, p.input_path)
    if info.band_count != card["in_channels"]:
        plural = "s" if info.band_count != 1 else ""
        raise GeoSegError(f"INPUT has {info.band_count} band{plural}, but the model was trained on "
                          f"{card['in_channels']} (bands {card['bands']}); use a raster with the same bands.")
    chip, sx, sy, crop = _resolve(p, card)
    tiling = make_tiling(info.width, info.height, chip, sx, sy, crop)
    radius = (card.get("recommended") or {}).get("receptive_field_radius")
    if radius is not None and crop < radius:
        log.info("CROP %d is below the model's receptive-field radius %d: tiles may differ slightly from "
                 "whole-image inference near their seams.", crop, radius)
    return card, ds, info, tiling


def segment(p: SegmentParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
            ) -> SegmentResult:
    """Segment `p.input_path` with `p.model_path`; raise GeoSegError (or Cancelled) on failure."""
    t0 = time.perf_counter()
    card, ds, info, tiling = preflight(p)
    chip, sx, sy, crop = _resolve(p, card)
    warnings = compatibility_warnings(card, p.input_path)
    for w in warnings:
        log.warning(w)
    engine = open_backend(p.model_path, card, p.backend, p.device, chip)

    with ExitStack() as stack:  # both files appear complete, or not at all
        out_tmp = stack.enter_context(staged_file(p.output_path, "OUTPUT"))
        prob_tmp = stack.enter_context(staged_file(p.probabilities_path, "OUTPUT_PROBABILITIES")) \
            if p.probabilities_path else None
        _predict(ds, info, tiling, engine, card, out_tmp, prob_tmp, p.batch_size, progress, cancelled)
    set_category_names(p.output_path, {c["value"]: c["name"] for c in card["classes"]})  # after the rename
    seconds = time.perf_counter() - t0
    log.info("Segmented %d tiles (%d × %d px, chip %d, stride %d × %d, crop %d) in %.1f s.", tiling.tiles,
             info.width, info.height, chip, sx, sy, crop, seconds)
    return SegmentResult(os.path.abspath(p.output_path),
                         os.path.abspath(p.probabilities_path) if p.probabilities_path else None,
                         card, engine.name, engine.provider, tiling.tiles, seconds, warnings)
