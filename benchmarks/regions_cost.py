"""Issue 17: the cost of TTA as a ratio to plain segment, and SIEVE + polygonize on a finished map.

- TTA: segment of one raster with TTA 0, 1 (4 views) and 2 (8 views), each in a fresh process, same
  model (the demo's UNet, random weights) and automatic batch; ratio = seconds / seconds with TTA 0.
- Polygons: a 4096² Byte class map of blob-shaped regions (smoothed noise, 5 classes, a nodata hole),
  sieved (SIEVE 16) and polygonized over the whole finished map by core/regions.py, each in a fresh
  process: peak RSS and time.
"""

from __future__ import annotations

import os
import tempfile

from .common import run_child
from .export_memory import write_raster
from .segment_speed import BANDS, unet_model

SEGMENT = r"""
import json, sys
from geoseg.core.predict import SegmentParams, segment
raster, model, out, tta = sys.argv[1:5]
r = segment(SegmentParams(raster, model, out, batch_size=0, tta=tta))
print(json.dumps({"tiles": r.tiles, "seconds": r.seconds, "batch": r.batch_size, "peak_kb": hwm()}))
"""

CLASS_MAP = r"""
import json, sys
import numpy as np
from osgeo import gdal
path, size = sys.argv[1], int(sys.argv[2])
ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 1, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE"])
ds.SetGeoTransform((500000, 1, 0, 5000000, 0, -1))
from osgeo import osr
s = osr.SpatialReference(); s.ImportFromEPSG(32633); ds.SetProjection(s.ExportToWkt())
band = ds.GetRasterBand(1); band.SetNoDataValue(255)
rng = np.random.default_rng(0)
coarse = rng.integers(0, 5, (size // 16 + 1, size // 16 + 1)).astype(np.uint8)
for y in range(0, size, 256):
    rows = np.repeat(np.repeat(coarse[y // 16 : y // 16 + 17], 16, 0), 16, 1)[:256, :size]
    noise = rng.integers(0, 5, rows.shape).astype(np.uint8)
    rows = np.where(rng.random(rows.shape) < 0.02, noise, rows)  # speckle for SIEVE to remove
    if size // 3 <= y < size // 3 + 256:
        rows[:, size // 3 : size // 3 + 512] = 255
    band.WriteArray(rows[: min(256, size - y)], 0, y)
ds = None
print(json.dumps({}))
"""

REGIONS = r"""
import json, sys, time
from geoseg.core.regions import polygonize, sieve_in_place
path, out, step = sys.argv[1:4]
t0 = time.perf_counter()
if step == "sieve":
    passes = sieve_in_place(path, 16, lambda f: None, lambda: False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "passes": passes, "peak_kb": hwm()}))
else:
    n = polygonize(path, out, {i: f"class {i}" for i in range(5)}, lambda f: None, lambda: False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "features": n, "peak_kb": hwm()}))
"""


def run(tta_size: int = 1024, map_size: int = 4096) -> dict:
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        model, _, _ = unet_model(tmp)
        raster = os.path.join(tmp, "r.tif")
        write_raster(raster, tta_size, BANDS)
        tta = {
            t: run_child(SEGMENT, raster, model, os.path.join(tmp, f"tta-{t}.tif"), t) for t in ("none", "flips", "all")
        }
        classes = os.path.join(tmp, "classes.tif")
        run_child(CLASS_MAP, classes, str(map_size))
        sieve = run_child(REGIONS, classes, "", "sieve")
        poly = run_child(REGIONS, classes, os.path.join(tmp, "regions.gpkg"), "polygonize")
    return {"tta_size": tta_size, "map_size": map_size, "tta": tta, "sieve": sieve, "polygonize": poly}


def report(r: dict) -> list[str]:
    base = r["tta"]["none"]["seconds"]
    lines = [
        "## Test-time augmentation, SIEVE and polygons",
        "",
        f"TTA: a {r['tta_size']}² 4-band raster, the segment-speed UNet, automatic batch (divided by the views), "
        "each run a fresh process.",
        "",
        "| TTA | views | tiles | seconds | ratio to TTA 0 | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for level, views in (("none", 1), ("flips", 4), ("all", 8)):
        t = r["tta"][level]
        lines.append(
            f"| {level} | {views} | {t['tiles']} | {t['seconds']:.1f} | {t['seconds'] / base:.2f} | "
            f"{t['peak_kb'] / 1024:.0f} MB |"
        )
    s, p = r["sieve"], r["polygonize"]
    lines += [
        "",
        f"A {r['map_size']}² Byte class map (5 classes, 16-pixel blobs, 2 % speckle, a nodata hole):",
        "",
        "| step | seconds | peak RSS | result |",
        "|---|---|---|---|",
        f"| SIEVE 16 (gdal.SieveFilter, 4-connected, repeated until a pass changes nothing) | {s['seconds']:.1f} | "
        f"{s['peak_kb'] / 1024:.0f} MB | {s['passes']} passes |",
        f"| polygonize (gdal.Polygonize over the whole map, mask band; MakeValid where needed; GeoPackage) | "
        f"{p['seconds']:.1f} | {p['peak_kb'] / 1024:.0f} MB | {p['features']} polygons |",
        "",
    ]
    return lines
