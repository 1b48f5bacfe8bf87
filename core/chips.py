"""Chip export: raster + label polygons → image/mask chips, chips.csv, dataset.json.

Streams one window at a time (memory does not grow with the raster), writes into a hidden
staging folder and renames it to OUTPUT_DIR only when everything succeeded. Labels are
rasterized once per row of chips (a strip); the main thread reads windows while a small thread
pool checks, describes and writes the chips (GDAL and numpy release the GIL), in grid order.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from osgeo import gdal

from . import __version__
from .classes import class_table
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .gdalx import with_gdal_exceptions
from .grid import Window, make_grid
from .index import write_index
from .labels import load_labels
from .memory import export_bytes, require_memory
from .params import ExportParams  # defined once there, with its front-end metadata
from .raster import MASK_NODATA, open_raster, raster_info, read_window, window_geotransform, write_geotiff
from .records import ChipRecord
from .split import SPLIT_METHODS, split_chips
from .staging import check_new_dir, check_new_file, remove_stale_outputs, staged_dir, staged_file
from .stats import Moments, merge

log = logging.getLogger("geoseg")

MODES = ("all", "positive", "divided")
WORKERS = 2  # threads checking, describing and writing chips while the main thread reads the next windows
MAX_PENDING = 4  # chips in flight: enough to keep the workers busy, memory stays flat


@dataclass(frozen=True)
class ExportResult:
    output_dir: str
    n_chips: int
    n_train: int
    n_validation: int
    n_grid: int
    n_skipped_empty: int
    n_skipped_nodata: int
    n_skipped_negative: int
    index_path: str | None
    dataset: dict
    seconds: float


def validate(p: ExportParams) -> None:
    """Cheap checks before any file is opened."""
    if p.chip_size < 8:
        raise GeoSegError(f"CHIP_SIZE must be at least 8 pixels (got {p.chip_size}).", param="CHIP_SIZE")
    for name, s in (("STRIDE_X", p.stride_x), ("STRIDE_Y", p.stride_y)):
        if s is not None and s < 1:
            raise GeoSegError(f"{name} must be a positive number of pixels (got {s}).", param=name)
    if p.mode not in MODES:
        raise GeoSegError(f"MODE must be one of {', '.join(MODES)} (got '{p.mode}').", param="MODE")
    if not 0 <= p.background < MASK_NODATA:
        raise GeoSegError(
            f"BACKGROUND must be 0-254; 255 marks ignored pixels (got {p.background}).", param="BACKGROUND"
        )
    if not 0 < p.max_nodata_fraction <= 1:
        raise GeoSegError(
            f"MAX_NODATA_FRACTION must be above 0 and at most 1 (got {p.max_nodata_fraction}).",
            param="MAX_NODATA_FRACTION",
        )
    if not 0 <= p.validation_fraction < 1:
        raise GeoSegError(
            f"VALIDATION_FRACTION must be at least 0 and below 1 (got {p.validation_fraction}).",
            param="VALIDATION_FRACTION",
        )
    if p.split_method not in SPLIT_METHODS:
        raise GeoSegError(
            f"SPLIT_METHOD must be one of {', '.join(SPLIT_METHODS)} (got '{p.split_method}').", param="SPLIT_METHOD"
        )
    if not p.output_dir:
        raise GeoSegError("OUTPUT_DIR: no output folder given.", param="OUTPUT_DIR")
    check_new_dir(os.path.abspath(p.output_dir), "OUTPUT_DIR", param="OUTPUT_DIR")
    if p.index_path:
        check_new_file(p.index_path, "INDEX", param="INDEX")


def chip_name(win: Window) -> str:
    return f"chip_r{win.yoff:06d}_c{win.xoff:06d}.tif"


# Complexity kept: the export's steps in order (validate, clean stale outputs, open, stage, chip in a pool,
# index, commit); each step is already a helper, the branches are its cancel/cleanup paths.
@with_gdal_exceptions
def export_chips(  # noqa: C901
    p: ExportParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> ExportResult:
    """Export chips as described by `p`; raise GeoSegError (or Cancelled) on failure."""
    t0, started = time.perf_counter(), time.time()
    validate(p)
    remove_stale_outputs((p.output_dir, p.index_path), started)  # left by a killed run (SIGKILL)
    ds = open_raster(p.input_path)
    info = raster_info(ds, p.input_path)
    require_memory(
        export_bytes(p.chip_size, info.band_count, info.dtype.itemsize, info.width, MAX_PENDING + 2),
        f"exporting chips of {p.chip_size} × {p.chip_size} pixels ({info.band_count} bands)",
        "CHIP_SIZE",
        "Use a smaller CHIP_SIZE.",
    )
    labels = load_labels(p.labels_path, info, p.class_field, p.name_field)
    if labels.skipped_null:
        log.warning("%d label polygons have no class value and were ignored.", labels.skipped_null)
    grid = make_grid(info.width, info.height, p.chip_size, p.stride_x, p.stride_y)
    if grid.pad_x or grid.pad_y:
        log.warning(
            "The raster (%d x %d) is smaller than one chip; chips are padded by %d x %d "
            "pixels (image: nodata, mask: 255).",
            info.width,
            info.height,
            grid.pad_x,
            grid.pad_y,
        )
    values = sorted(set(labels.class_values) | {p.background})
    img_nodata = info.nodata[0]
    if img_nodata is None and (grid.pad_x or grid.pad_y):
        img_nodata = 0  # padding must be recognisable in the image chips too

    records: list[ChipRecord] = []
    skipped = {"empty": 0, "nodata": 0, "negative": 0}
    with staged_dir(p.output_dir, "OUTPUT_DIR") as stage:
        subdirs = ["positive", "background"] if p.mode == "divided" else [""]
        for kind in ("images", "masks"):
            for sub in subdirs:
                os.makedirs(os.path.join(stage, kind, sub), exist_ok=True)
        n = len(grid)
        row: int | None = None
        strip = np.empty((0, 0), np.uint8)  # the labels of the current row of windows: set on the first window
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="geoseg-chips") as pool:  # waits before cleanup
            for i, win in enumerate(grid):
                if cancelled():
                    raise Cancelled()
                if win.yoff != row:  # blocks of finished rows are not read again: keep the cache to one row
                    ds.FlushCache()
                    row = win.yoff
                    strip = labels.rasterize(info, Window(0, win.yoff, info.width, win.height), p.background)
                pixels, valid = read_window(ds, info, win)
                pending.append(pool.submit(_export_one, info, pixels, valid, strip, win, p, stage, img_nodata, values))
                while len(pending) > MAX_PENDING or (pending and pending[0].done()):
                    _collect(pending.popleft(), records, skipped)  # in grid order; a write error is raised here
                progress(0.95 * (i + 1) / n)
            while pending:
                _collect(pending.popleft(), records, skipped)
        if not records:
            raise GeoSegError(_nothing_exported(p, n, skipped))

        block = p.block_size or 4 * p.chip_size
        splits = split_chips([(r.xoff, r.yoff) for r in records], p.validation_fraction, p.split_method, p.seed, block)
        for r, s in zip(records, splits, strict=False):
            r.split = s
        dataset = _dataset_json(p, info, labels, grid, records, values, block)
        _write_csv(os.path.join(stage, "chips.csv"), records, values)
        with open(os.path.join(stage, "dataset.json"), "w", encoding="utf-8") as f:
            json.dump(dataset, f, indent=2)
        if cancelled():
            raise Cancelled()
        if p.index_path:
            with staged_file(p.index_path, "INDEX") as tmp:
                write_index(tmp, records, values, info, p.chip_size)
                if cancelled():
                    raise Cancelled()
                progress(1.0)
    n_val = sum(r.split == "validation" for r in records)
    return ExportResult(
        os.path.abspath(p.output_dir),
        len(records),
        len(records) - n_val,
        n_val,
        len(grid),
        skipped["empty"],
        skipped["nodata"],
        skipped["negative"],
        os.path.abspath(p.index_path) if p.index_path else None,
        dataset,
        time.perf_counter() - t0,
    )


def _collect(job: Future, records: list[ChipRecord], skipped: dict[str, int]) -> None:
    result = job.result()
    if isinstance(result, str):
        skipped[result] += 1
    else:
        records.append(result)


@with_gdal_exceptions  # a worker thread: GDAL ≥ 3.7 keeps the exception mode per thread
def _export_one(
    info,
    pixels: np.ndarray,
    valid: np.ndarray,
    strip: np.ndarray,
    win: Window,
    p: ExportParams,
    stage: str,
    img_nodata: float | None,
    values: list[int],
) -> ChipRecord | str:
    """Check, describe and write one chip read by the main thread (runs in a worker thread);
    returns its record, or why it was skipped. `strip` holds the labels of the chip's row,
    rasterized once for the whole raster width."""
    real = valid[: win.height, : win.width]
    n_valid = int(real.sum())
    if n_valid == 0:
        return "empty"
    nodata_fraction = 1.0 - n_valid / real.size
    if nodata_fraction > p.max_nodata_fraction:
        return "nodata"
    mask = strip[:, win.xoff : win.xoff + win.width]
    if win.pad_x or win.pad_y:
        mask = np.pad(mask, ((0, win.pad_y), (0, win.pad_x)), constant_values=MASK_NODATA)
    else:
        mask = mask.copy()
    mask[~valid] = MASK_NODATA
    counts = np.bincount(mask.ravel(), minlength=256)
    positive = bool(counts[:MASK_NODATA].sum() - counts[p.background] > 0)
    if p.mode == "positive" and not positive:
        return "negative"
    sub = ("positive" if positive else "background") if p.mode == "divided" else ""
    name = chip_name(win)
    image_rel = "/".join(x for x in ("images", sub, name) if x)
    mask_rel = "/".join(x for x in ("masks", sub, name) if x)
    gt = window_geotransform(info.geotransform, win)
    write_geotiff(os.path.join(stage, image_rel), pixels, gt, info.wkt, info.gdal_type, img_nodata)
    write_geotiff(os.path.join(stage, mask_rel), mask, gt, info.wkt, gdal.GDT_Byte, MASK_NODATA)
    return ChipRecord(
        image_rel,
        mask_rel,
        win.xoff,
        win.yoff,
        positive,
        round(nodata_fraction, 6),
        {v: int(counts[v]) for v in values},
        Moments.of(pixels, valid),
    )


def _nothing_exported(p: ExportParams, n: int, skipped: dict[str, int]) -> str:
    why = []
    if skipped["empty"]:
        why.append(f"{skipped['empty']} hold only nodata")
    if skipped["nodata"]:
        why.append(f"{skipped['nodata']} exceed MAX_NODATA_FRACTION={p.max_nodata_fraction}")
    if skipped["negative"]:
        why.append(f"{skipped['negative']} hold no label (MODE=Positive)")
    return f"No chip was exported: of {n} grid chips, " + ", ".join(why) + "."


def _write_csv(path: str, records: list[ChipRecord], values: list[int]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["image", "mask", "split", "xoff", "yoff", "positive", "nodata_fraction"] + [f"class_{v}" for v in values]
        )
        for r in records:
            w.writerow(
                [r.image, r.mask, r.split, r.xoff, r.yoff, int(r.positive), r.nodata_fraction]
                + [r.class_counts[v] for v in values]
            )


def _dataset_json(
    p: ExportParams, info, labels, grid, records: list[ChipRecord], values: list[int], block: int
) -> dict:
    train = [r for r in records if r.split == "train"] or records
    mean, std, n_px = merge([r.moments for r in train], info.band_count)
    std = np.where(std > 0, std, 1.0)  # a constant band must not divide by zero later

    def counts(rs: list[ChipRecord]) -> dict[str, int]:
        return {str(v): int(sum(r.class_counts[v] for r in rs)) for v in values}

    srs = info.srs
    authid = None
    if srs is not None and srs.GetAuthorityName(None) and srs.GetAuthorityCode(None):
        authid = f"{srs.GetAuthorityName(None)}:{srs.GetAuthorityCode(None)}"
    return {
        "geoseg_version": __version__,
        "classes": class_table(values, labels.class_names, p.background),
        "background": p.background,
        "ignore_value": MASK_NODATA,
        "bands": list(range(1, info.band_count + 1)),
        "in_channels": info.band_count,
        "data_type": gdal.GetDataTypeName(info.gdal_type),
        "nodata": [None if v is None or np.isnan(v) else v for v in info.nodata],
        "normalization": {
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "pixels": n_px,
            "computed_on": "train",
        },
        "class_pixel_counts": counts(records),
        "class_pixel_counts_by_split": {
            "train": counts([r for r in records if r.split == "train"]),
            "validation": counts([r for r in records if r.split == "validation"]),
        },
        "chip_size": p.chip_size,
        "stride": [grid.stride_x, grid.stride_y],
        "padding": {"x": grid.pad_x, "y": grid.pad_y},
        "mode": p.mode,
        "crs": {"wkt": info.wkt, "authid": authid},
        "pixel_size": list(info.pixel_size),
        "source": {
            "raster": os.path.abspath(p.input_path),
            "labels": p.labels_path,
            "class_field": p.class_field,
            "raster_size": [info.width, info.height],
        },
        "split": {
            "method": p.split_method,
            "validation_fraction": p.validation_fraction,
            "seed": p.seed,
            "block_size": block if p.split_method == "blocks" else None,
            "train": sum(r.split == "train" for r in records),
            "validation": sum(r.split == "validation" for r in records),
        },
        "chips": len(records),
        "params": {k: v for k, v in asdict(p).items() if k not in ("input_path", "labels_path", "output_dir")},
    }
