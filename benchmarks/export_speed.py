"""Chip export speed: `export_chips` against bare GDAL windowed reads and writes of the same
windows (an image chip and a mask chip GeoTIFF each), both in fresh processes on the same raster.

The bare loop is the I/O floor of the job: it reads each window and writes the two files the
export writes, with nothing else (no labels, statistics, checks, chips.csv or dataset.json).
Each side runs twice; the faster run counts, so a noisy neighbour does not decide the ratio.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .common import run_child
from .export_memory import write_labels, write_raster

CHIP = 256

EXPORT = r"""
import json, sys
from geoseg.core.chips import ExportParams, export_chips
raster, labels, out, chip = sys.argv[1:5]
r = export_chips(ExportParams(raster, labels, out, class_field="cls", chip_size=int(chip)))
print(json.dumps({"chips": r.n_chips, "seconds": r.seconds}))
"""

BARE = r"""
import json, os, sys, time
import numpy as np
from osgeo import gdal
from geoseg.core.grid import make_grid
gdal.UseExceptions()
raster, out, chip = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
src = gdal.Open(raster)
gt, wkt, dtype = src.GetGeoTransform(), src.GetProjection(), src.GetRasterBand(1).DataType
tiff = gdal.GetDriverByName("GTiff")
for d in ("images", "masks"):
    os.makedirs(os.path.join(out, d))
n = 0
for w in make_grid(src.RasterXSize, src.RasterYSize, chip):
    pixels = src.ReadAsArray(w.xoff, w.yoff, w.width, w.height)
    mask = np.zeros((1, w.height, w.width), np.uint8)
    cgt = (gt[0] + w.xoff * gt[1], gt[1], 0.0, gt[3] + w.yoff * gt[5], 0.0, gt[5])
    name = f"chip_r{w.yoff:06d}_c{w.xoff:06d}.tif"
    for folder, arr, kind, nodata in (("images", pixels, dtype, None), ("masks", mask, gdal.GDT_Byte, 255)):
        ds = tiff.Create(os.path.join(out, folder, name), w.width, w.height, len(arr), kind)
        ds.SetGeoTransform(cgt)
        ds.SetProjection(wkt)
        for i, a in enumerate(arr):
            band = ds.GetRasterBand(i + 1)
            if nodata is not None:
                band.SetNoDataValue(nodata)
            band.WriteArray(a)
        ds = None
    n += 1
print(json.dumps({"chips": n, "seconds": time.perf_counter() - t0}))
"""


def run(size: int = 8192, repeats: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        raster, labels = os.path.join(tmp, "r.tif"), os.path.join(tmp, "l.gpkg")
        write_raster(raster, size)
        write_labels(labels, size)
        export, bare = [], []
        for i in range(repeats):
            out = os.path.join(tmp, f"chips{i}")
            export.append(run_child(EXPORT, raster, labels, out, str(CHIP)))
            shutil.rmtree(out)
            out = os.path.join(tmp, f"bare{i}")
            bare.append(run_child(BARE, raster, out, str(CHIP)))
            shutil.rmtree(out)
    best = min(export, key=lambda r: r["seconds"]), min(bare, key=lambda r: r["seconds"])
    return {"size": size, "export": best[0], "bare": best[1], "runs": {"export": export, "bare": bare}}


def report(r: dict) -> list[str]:
    e, b = r["export"], r["bare"]
    rate_e, rate_b = e["chips"] / e["seconds"], b["chips"] / b["seconds"]
    runs = ", ".join(f"{x['chips'] / x['seconds']:.0f}" for x in r["runs"]["export"])
    runs_b = ", ".join(f"{x['chips'] / x['seconds']:.0f}" for x in r["runs"]["bare"])
    return [
        "## Chip export speed",
        "",
        f"{CHIP}-px chips (no overlap) of a {r['size']}² 4-band UInt16 raster with 400 label polygons; the bare "
        "loop reads the same windows with GDAL and writes an image and a mask GeoTIFF per window, nothing else. "
        f"Best of {len(r['runs']['export'])} fresh processes each.",
        "",
        "| run | chips | seconds | chips/s | all runs, chips/s |",
        "|---|---|---|---|---|",
        f"| export_chips | {e['chips']} | {e['seconds']:.1f} | {rate_e:.0f} | {runs} |",
        f"| bare GDAL read + 2 writes | {b['chips']} | {b['seconds']:.1f} | {rate_b:.0f} | {runs_b} |",
        "",
        f"- export / bare GDAL: **{rate_e / rate_b:.2f}** (target ≥ 0.8)",
        "",
    ]
