"""Chip export: raster + label polygons (or a classified raster) → image/mask chips, chips.csv, dataset.json.

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
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from osgeo import gdal

from . import __version__
from .append import Existing, check_classes, check_scene, commit, open_existing, resplit_scenes, scene_id, stage_in
from .classes import class_table
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .gdalx import with_gdal_exceptions
from .grid import Window, make_grid
from .index import write_index
from .labels import AreaOfInterest, load_label_raster, load_labels
from .memory import export_bytes, require_memory
from .params import ExportParams  # defined once there, with its front-end metadata
from .raster import MASK_NODATA, RasterInfo, open_raster, raster_info, read_window, window_geotransform, write_geotiff
from .records import ChipRecord
from .split import SPLIT_METHODS, split_chips
from .staging import check_new_dir, check_new_file, remove_stale_outputs, staged_dir, staged_file
from .stats import Moments, combine, merge

log = logging.getLogger("geoseg")

MODES = ("all", "positive", "divided")
CHIP_FORMATS = ("geotiff", "png", "npz")  # core.options.CHIP_FORMAT_CHOICES
PNG_MAX_BANDS = 4  # grey, grey + alpha, RGB, RGBA
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
    if p.chip_format not in CHIP_FORMATS:
        raise GeoSegError(
            f"CHIP_FORMAT must be one of {', '.join(CHIP_FORMATS)} (got '{p.chip_format}').", param="CHIP_FORMAT"
        )
    _check_sources(p)
    if p.index_path:
        check_new_file(p.index_path, "INDEX", param="INDEX")


def _check_sources(p: ExportParams) -> None:
    """Exactly one kind of labels; a new or empty output folder, or with APPEND a GeoSeg chips folder."""
    if bool(p.labels_path) == bool(p.label_raster):
        raise GeoSegError(
            "LABELS: give the labels either as polygons (LABELS) or as a classified raster (LABEL_RASTER), "
            + ("not both." if p.labels_path else "and none was given."),
            param="LABELS",
        )
    if not p.output_dir:
        raise GeoSegError("OUTPUT_DIR: no output folder given.", param="OUTPUT_DIR")
    if p.append:
        open_existing(os.path.abspath(p.output_dir))
    else:
        check_new_dir(os.path.abspath(p.output_dir), "OUTPUT_DIR", param="OUTPUT_DIR")


def chip_name(win: Window, prefix: str = "", ext: str = ".tif") -> str:
    return f"{prefix}chip_r{win.yoff:06d}_c{win.xoff:06d}{ext}"


def check_format(p: ExportParams, info: RasterInfo, existing: Existing | None) -> None:
    """PNG holds only 8-bit data of 1-4 bands; an appended scene keeps the folder's chip format."""
    if p.chip_format == "png" and (info.gdal_type != gdal.GDT_Byte or info.band_count > PNG_MAX_BANDS):
        raise GeoSegError(
            f"CHIP_FORMAT: PNG chips need 8-bit (Byte) data of 1-{PNG_MAX_BANDS} bands, but the raster has "
            f"{info.band_count} band{'s' if info.band_count != 1 else ''} of {gdal.GetDataTypeName(info.gdal_type)}; "
            "choose GeoTIFF (or GeoTIFF + Segmentation Zoo .npz).",
            param="CHIP_FORMAT",
        )
    if existing is not None:
        had = (existing.dataset.get("params") or {}).get("chip_format", "geotiff")
        if had != p.chip_format:
            raise GeoSegError(
                f"CHIP_FORMAT is {p.chip_format}, but the chips folder {existing.folder} holds {had} chips; an "
                "appended scene must use the folder's chip format.",
                param="CHIP_FORMAT",
            )


def write_png(path: str, array: np.ndarray, gt: tuple[float, ...]) -> None:
    """An 8-bit [bands, h, w] (or [h, w]) chip as PNG with a world file (.wld) for its position.

    Built in memory and written with Python's file I/O, as write_geotiff, so a full disk raises."""
    if array.ndim == 2:
        array = array[np.newaxis]
    bands, h, w = array.shape
    png = f"/vsimem/geoseg-png-{threading.get_ident()}.png"  # one at a time per thread
    wld = png[:-4] + ".wld"
    src = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    src.SetGeoTransform(gt)
    for i in range(bands):
        src.GetRasterBand(i + 1).WriteArray(array[i])
    gdal.GetDriverByName("PNG").CreateCopy(png, src, options=["WORLDFILE=YES"])
    src = None
    try:
        for vsi, out in ((png, path), (wld, os.path.splitext(path)[0] + ".wld")):
            data = _vsi_bytes(vsi)
            if data is not None:
                with open(out, "wb") as f:
                    f.write(data)
    finally:
        for vsi in (png, wld, png + ".aux.xml"):
            if gdal.VSIStatL(vsi) is not None:
                gdal.Unlink(vsi)


def _vsi_bytes(vsi: str) -> bytes | None:
    if gdal.VSIStatL(vsi) is None:
        return None
    f = gdal.VSIFOpenL(vsi, "rb")
    try:
        gdal.VSIFSeekL(f, 0, os.SEEK_END)
        size = gdal.VSIFTellL(f)
        gdal.VSIFSeekL(f, 0, os.SEEK_SET)
        return bytes(gdal.VSIFReadL(1, size, f))
    finally:
        gdal.VSIFCloseL(f)


def write_npz(path: str, pixels: np.ndarray, mask: np.ndarray) -> None:
    """A Segmentation Zoo pair: arr_0 the image (height, width, bands), arr_1 the label (height, width)."""
    with open(path, "wb") as f:
        np.savez_compressed(f, arr_0=np.ascontiguousarray(np.moveaxis(pixels, 0, -1)), arr_1=mask)


# Complexity kept: the export's steps in order (validate, clean stale outputs, open, stage, chip in a pool,
# split, index, commit); each step is already a helper, the branches are its cancel/cleanup paths.
@with_gdal_exceptions
def export_chips(  # noqa: C901, PLR0912, PLR0915
    p: ExportParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> ExportResult:
    """Export chips as described by `p`; raise GeoSegError (or Cancelled) on failure."""
    t0, started = time.perf_counter(), time.time()
    validate(p)
    out = os.path.abspath(p.output_dir)
    remove_stale_outputs((p.output_dir, p.index_path, os.path.join(out, "chips.csv") if p.append else None), started)
    existing = open_existing(out) if p.append else None
    ds = open_raster(p.input_path)
    info = raster_info(ds, p.input_path)
    if existing is not None:
        check_scene(existing, info, p.chip_size, p.background)
    check_format(p, info, existing)
    require_memory(
        export_bytes(p.chip_size, info.band_count, info.dtype.itemsize, info.width, MAX_PENDING + 2),
        f"exporting chips of {p.chip_size} × {p.chip_size} pixels ({info.band_count} bands)",
        "CHIP_SIZE",
        "Use a smaller CHIP_SIZE.",
    )
    labels = (
        load_label_raster(p.label_raster, info)
        if p.label_raster
        else load_labels(p.labels_path or "", info, p.class_field, p.name_field)
    )
    if labels.skipped_null:
        log.warning("%d label polygons have no class value and were ignored.", labels.skipped_null)
    aoi = AreaOfInterest(p.mask_path, info) if p.mask_path else None
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
    scene = scene_id(p.input_path, existing.scenes if existing else [])
    prefix = f"{scene}_" if existing is not None else ""
    img_nodata = info.nodata[0]
    if img_nodata is None and (grid.pad_x or grid.pad_y):
        img_nodata = 0  # padding must be recognisable in the image chips too

    records: list[ChipRecord] = []
    skipped = {"empty": 0, "nodata": 0, "negative": 0, "outside": 0}
    with _staging(out, existing) as stage:
        subdirs = ["positive", "background"] if p.mode == "divided" else [""]
        for kind in ("images", "masks", "npz") if p.chip_format == "npz" else ("images", "masks"):
            for sub in subdirs:
                os.makedirs(os.path.join(stage, kind, sub), exist_ok=True)
        n = len(grid)
        row: int | None = None
        strip = np.empty((0, 0), np.uint8)  # the labels of the current row of windows: set on the first window
        inside: np.ndarray | None = None  # the area of interest in that row (MASK)
        pending: deque[Future] = deque()
        job = _Job(p, info, stage, img_nodata, prefix)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="geoseg-chips") as pool:  # waits before cleanup
            for i, win in enumerate(grid):
                if cancelled():
                    raise Cancelled()
                if win.yoff != row:  # blocks of finished rows are not read again: keep the cache to one row
                    ds.FlushCache()
                    row = win.yoff
                    strip_win = Window(0, win.yoff, info.width, win.height)
                    strip = labels.rasterize(info, strip_win, p.background)
                    if aoi is not None:
                        inside = aoi.inside(info, strip_win)
                        strip[~inside] = MASK_NODATA
                pixels, valid = read_window(ds, info, win)
                pending.append(pool.submit(_export_one, job, pixels, valid, strip, inside, win))
                while len(pending) > MAX_PENDING or (pending and pending[0].done()):
                    _collect(pending.popleft(), records, skipped)  # in grid order; a write error is raised here
                progress(0.95 * (i + 1) / n)
            while pending:
                _collect(pending.popleft(), records, skipped)
        if not records:
            raise GeoSegError(_nothing_exported(p, n, skipped))
        for r in records:
            r.scene = scene
        seen = {v for r in records for v, c in r.class_counts.items() if c}
        values = sorted(set(labels.class_values) | seen | {p.background})
        block = p.block_size or 4 * p.chip_size
        if existing is None:
            _split_new(p, records, block)
            dataset = _dataset_json(p, info, labels, grid, records, values, block, scene)
            _write_csv(os.path.join(stage, "chips.csv"), records, values)
        else:
            dataset, rows = _appended(p, existing, info, labels, records, values, block, scene)
            _write_rows(os.path.join(stage, "chips.csv"), rows, [int(c["value"]) for c in dataset["classes"]])
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
        out,
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


@contextmanager
def _staging(out: str, existing: Existing | None) -> Iterator[str]:
    """A new folder: staged beside OUTPUT_DIR and renamed. An append: staged inside it, swapped in by
    `append.commit` (an error or cancel before or during the swap leaves the folder as it was)."""
    if existing is None:
        with staged_dir(out, "OUTPUT_DIR") as stage:
            yield stage
        return
    stage = stage_in(out)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    commit(stage, out)


def _split_new(p: ExportParams, records: list[ChipRecord], block: int) -> None:
    """The split of a new (one-scene) folder; the per-scene split starts with every chip in training."""
    if p.split_method == "scenes":
        log.warning(
            "SPLIT_METHOD per scene: one scene so far, so every chip is a training chip; scenes added "
            "with APPEND are split then."
        )
        splits = ["train"] * len(records)
    else:
        splits = split_chips([(r.xoff, r.yoff) for r in records], p.validation_fraction, p.split_method, p.seed, block)
    for r, s in zip(records, splits, strict=True):
        r.split = s


def _appended(
    p: ExportParams, ex: Existing, info, labels, records: list[ChipRecord], values: list[int], block: int, scene: str
) -> tuple[dict, list[dict]]:
    """dataset.json and the chips.csv rows of the folder with the new scene added."""
    source = "LABEL_RASTER" if p.label_raster else "LABELS"
    classes = check_classes(ex, values, labels.class_names, source)
    all_values = [int(c["value"]) for c in classes]
    new_rows = [_row(r, all_values) for r in records]
    moments = ex.moments
    if p.split_method == "scenes":
        scenes = [r["scene"] for r in ex.rows] + [scene] * len(records)
        splits = split_chips([(0, 0)] * len(scenes), p.validation_fraction, "scenes", p.seed, block, scenes)
        by_scene = dict(zip(scenes, splits, strict=True))
        moments = resplit_scenes(ex, by_scene)
        for r in records:
            r.split = by_scene[scene]
    else:
        splits = split_chips([(r.xoff, r.yoff) for r in records], p.validation_fraction, p.split_method, p.seed, block)
        for r, s in zip(records, splits, strict=True):
            r.split = s
    for r, row in zip(records, new_rows, strict=True):
        row["split"] = r.split
    moments = {**moments, scene: _moments_by_split(records, info.band_count)}
    rows = ex.rows + new_rows
    d = dict(ex.dataset)
    d["classes"] = classes
    d["normalization"] = _normalization(moments, info.band_count)
    d["moments"] = {s: {k: m.to_json() for k, m in splits_.items()} for s, splits_ in moments.items()}
    d["class_pixel_counts"] = _row_counts(rows, all_values)
    d["class_pixel_counts_by_split"] = {
        k: _row_counts([r for r in rows if r["split"] == k], all_values) for k in ("train", "validation")
    }
    d["scenes"] = [*d.get("scenes", []), _scene_entry(p, info, scene, len(records))]
    d["split"] = {
        **d.get("split", {}),
        "method": p.split_method,
        "validation_fraction": p.validation_fraction,
        "train": sum(r["split"] == "train" for r in rows),
        "validation": sum(r["split"] == "validation" for r in rows),
    }
    d["chips"] = len(rows)
    return d, rows


def _moments_by_split(records: list[ChipRecord], bands: int) -> dict[str, Moments]:
    out = {}
    for k in ("train", "validation"):
        part = [r.moments for r in records if r.split == k]
        if part:
            out[k] = combine(part, bands)
    return out


def _normalization(moments: dict[str, dict[str, Moments]], bands: int) -> dict:
    """Band mean/std of the training chips of every scene, merged exactly from the stored sums."""
    train = [m for splits in moments.values() for k, m in splits.items() if k == "train"]
    if not any(m.count for m in train):
        train = [m for splits in moments.values() for m in splits.values()]
    mean, std, n_px = merge(train, bands)
    std = np.where(std > 0, std, 1.0)  # a constant band must not divide by zero later
    return {"mean": [float(x) for x in mean], "std": [float(x) for x in std], "pixels": n_px, "computed_on": "train"}


def _row_counts(rows: list[dict], values: list[int]) -> dict[str, int]:
    return {str(v): sum(int(r.get(f"class_{v}") or 0) for r in rows) for v in values}


def _scene_entry(p: ExportParams, info, scene: str, n: int) -> dict:
    return {
        "id": scene,
        "raster": os.path.abspath(p.input_path),
        "labels": p.labels_path,
        "label_raster": os.path.abspath(p.label_raster) if p.label_raster else None,
        "mask": p.mask_path,
        "crs": info.wkt,
        "pixel_size": list(info.pixel_size),
        "raster_size": [info.width, info.height],
        "chips": n,
    }


def _collect(job: Future, records: list[ChipRecord], skipped: dict[str, int]) -> None:
    result = job.result()
    if isinstance(result, str):
        skipped[result] += 1
    else:
        records.append(result)


@dataclass(frozen=True)
class _Job:
    """What every chip of one export shares."""

    p: ExportParams
    info: RasterInfo
    stage: str
    img_nodata: float | None
    prefix: str  # file-name prefix: the scene id of an appended scene


@with_gdal_exceptions  # a worker thread: GDAL ≥ 3.7 keeps the exception mode per thread
def _export_one(
    job: _Job, pixels: np.ndarray, valid: np.ndarray, strip: np.ndarray, inside: np.ndarray | None, win: Window
) -> ChipRecord | str:
    """Check, describe and write one chip read by the main thread (runs in a worker thread);
    returns its record, or why it was skipped. `strip` holds the labels of the chip's row,
    rasterized once for the whole raster width; `inside` the area of interest there (MASK)."""
    p, info = job.p, job.info
    real = valid[: win.height, : win.width]
    n_valid = int(real.sum())
    if n_valid == 0:
        return "empty"
    if inside is not None and not inside[:, win.xoff : win.xoff + win.width].any():
        return "outside"
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
    name = chip_name(win, job.prefix, ".png" if p.chip_format == "png" else ".tif")
    image_rel = "/".join(x for x in ("images", sub, name) if x)
    mask_rel = "/".join(x for x in ("masks", sub, name) if x)
    gt = window_geotransform(info.geotransform, win)
    if p.chip_format == "png":
        write_png(os.path.join(job.stage, image_rel), pixels, gt)
        write_png(os.path.join(job.stage, mask_rel), mask, gt)
    else:
        write_geotiff(os.path.join(job.stage, image_rel), pixels, gt, info.wkt, info.gdal_type, job.img_nodata)
        write_geotiff(os.path.join(job.stage, mask_rel), mask, gt, info.wkt, gdal.GDT_Byte, MASK_NODATA)
    if p.chip_format == "npz":
        npz_rel = "/".join(x for x in ("npz", sub, os.path.splitext(name)[0] + ".npz") if x)
        write_npz(os.path.join(job.stage, npz_rel), pixels, mask)
    present = {int(v) for v in np.flatnonzero(counts[:MASK_NODATA])} | {p.background}
    return ChipRecord(
        image_rel,
        mask_rel,
        win.xoff,
        win.yoff,
        positive,
        round(nodata_fraction, 6),
        {v: int(counts[v]) for v in sorted(present)},
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
    if skipped.get("outside"):
        why.append(f"{skipped['outside']} lie wholly outside MASK")
    return f"No chip was exported: of {n} grid chips, " + ", ".join(why) + "."


CSV_COLUMNS = ["image", "mask", "split", "xoff", "yoff", "positive", "nodata_fraction"]


def _row(r: ChipRecord, values: list[int]) -> dict:
    row = {"image": r.image, "mask": r.mask, "split": r.split, "xoff": r.xoff, "yoff": r.yoff}
    row.update(positive=int(r.positive), nodata_fraction=r.nodata_fraction, scene=r.scene)
    row.update({f"class_{v}": r.class_counts.get(v, 0) for v in values})
    return row


def _write_csv(path: str, records: list[ChipRecord], values: list[int]) -> None:
    _write_rows(path, [_row(r, values) for r in records], values)


def _write_rows(path: str, rows: list[dict], values: list[int]) -> None:
    """chips.csv: one row per chip, with its scene and its pixel count of every class."""
    columns = [*CSV_COLUMNS, *(f"class_{v}" for v in values), "scene"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval=0)
        w.writeheader()
        w.writerows(rows)


def _dataset_json(
    p: ExportParams, info, labels, grid, records: list[ChipRecord], values: list[int], block: int, scene: str
) -> dict:
    moments = {scene: _moments_by_split(records, info.band_count)}

    def counts(rs: list[ChipRecord]) -> dict[str, int]:
        return {str(v): int(sum(r.class_counts.get(v, 0) for r in rs)) for v in values}

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
        "normalization": _normalization(moments, info.band_count),
        "moments": {s: {k: m.to_json() for k, m in splits.items()} for s, splits in moments.items()},
        "class_pixel_counts": counts(records),
        "class_pixel_counts_by_split": {
            "train": counts([r for r in records if r.split == "train"]),
            "validation": counts([r for r in records if r.split == "validation"]),
        },
        "chip_size": p.chip_size,
        "chip_format": p.chip_format,
        "stride": [grid.stride_x, grid.stride_y],
        "padding": {"x": grid.pad_x, "y": grid.pad_y},
        "mode": p.mode,
        "crs": {"wkt": info.wkt, "authid": authid},
        "pixel_size": list(info.pixel_size),
        "source": {
            "raster": os.path.abspath(p.input_path),
            "labels": p.labels_path,
            "label_raster": os.path.abspath(p.label_raster) if p.label_raster else None,
            "mask": p.mask_path,
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
        "scenes": [_scene_entry(p, info, scene, len(records))],
        "params": {
            k: v
            for k, v in asdict(p).items()
            if k not in ("input_path", "labels_path", "label_raster", "mask_path", "output_dir")
        },
    }
