"""Chip export memory: peak RSS of a fresh process exporting a 2k² and an 8k² raster, with label
polygons and (issue 16) with a classified label raster in another CRS and pixel size (LABEL_RASTER,
read through a warped VRT strip by strip).

Streaming export must hold one window at a time, so the peak should not grow with the
raster; each size runs in its own process so the peaks are independent.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from osgeo import gdal, ogr, osr

from .common import growth_line, run_child

gdal.UseExceptions()

CHILD = r"""
import json, sys
from geoseg.core.chips import ExportParams, export_chips
raster, labels, out, kind = sys.argv[1:5]
base = hwm()
if kind == "raster":
    r = export_chips(ExportParams(raster, None, out, label_raster=labels, chip_size=256))
else:
    r = export_chips(ExportParams(raster, labels, out, class_field="cls", chip_size=256))
print(json.dumps({"chips": r.n_chips, "seconds": r.seconds, "peak_kb": hwm(), "import_kb": base}))
"""


def write_raster(path: str, size: int, bands: int = 4) -> None:
    """A UInt16 raster written in strips, so generating it needs little memory too."""
    ds = gdal.GetDriverByName("GTiff").Create(
        path, size, size, bands, gdal.GDT_UInt16, ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]
    )
    ds.SetGeoTransform((500000, 1, 0, 5300000, 0, -1))
    s = osr.SpatialReference()
    s.ImportFromEPSG(32633)
    ds.SetProjection(s.ExportToWkt())
    rng = np.random.default_rng(0)
    strip = 512
    for y in range(0, size, strip):
        h = min(strip, size - y)
        block = rng.integers(1, 4000, (bands, h, size), dtype=np.uint16)
        for b in range(bands):
            ds.GetRasterBand(b + 1).WriteArray(block[b], 0, y)
    ds = None


def write_labels(path: str, size: int, n: int = 400) -> None:
    """n random rectangles with classes 1-4 over the raster (in its CRS)."""
    s = osr.SpatialReference()
    s.ImportFromEPSG(32633)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    lyr = ds.CreateLayer("labels", s, ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    rng = np.random.default_rng(1)
    lyr.StartTransaction()
    for _ in range(n):
        x, y = rng.uniform(0, size - 300, 2)
        w, h = rng.uniform(20, 300, 2)
        x0, y0 = 500000 + x, 5300000 - y
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetField("cls", int(rng.integers(1, 5)))
        f.SetGeometry(
            ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x0 + w} {y0},{x0 + w} {y0 - h},{x0} {y0 - h},{x0} {y0}))")
        )
        lyr.CreateFeature(f)
    lyr.CommitTransaction()
    ds = None


def write_label_raster(path: str, size: int) -> None:
    """A Byte class raster (0-4, nodata 255) over the raster in EPSG:3857 at 1.3 m, written in strips."""
    s = osr.SpatialReference()
    s.ImportFromEPSG(3857)
    t = osr.SpatialReference()
    t.ImportFromEPSG(32633)
    t.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x0, y0, x1, y1 = osr.CoordinateTransformation(t, s).TransformBounds(
        500000, 5300000 - size, 500000 + size, 5300000, 21
    )
    pixel = 1.3
    w, h = int((x1 - x0) / pixel) + 1, int((y1 - y0) / pixel) + 1
    ds = gdal.GetDriverByName("GTiff").Create(
        path, w, h, 1, gdal.GDT_Byte, ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE"]
    )
    ds.SetGeoTransform((x0, pixel, 0, y1, 0, -pixel))
    ds.SetProjection(s.ExportToWkt())
    band = ds.GetRasterBand(1)
    band.SetNoDataValue(255)
    rng = np.random.default_rng(2)
    for y in range(0, h, 512):
        rows = min(512, h - y)
        band.WriteArray(
            rng.integers(0, 5, (rows // 32 + 1, w // 32 + 1), dtype=np.uint8).repeat(32, 0).repeat(32, 1)[:rows, :w],
            0,
            y,
        )
    ds = None


def run(sizes: tuple[int, ...] = (2048, 8192), cache_mb: int | None = None) -> dict:
    """Peak memory per size; `cache_mb` pins GDAL's block cache (default: GDAL's 5% of RAM)."""
    env = dict(os.environ)
    if cache_mb is not None:
        env["GDAL_CACHEMAX"] = str(cache_mb)
    results = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
            raster, labels = os.path.join(tmp, "r.tif"), os.path.join(tmp, "l.gpkg")
            write_raster(raster, size)
            write_labels(labels, size)
            results[size] = run_child(CHILD, raster, labels, os.path.join(tmp, "chips"), "polygons", env=env)
            label_raster = os.path.join(tmp, "classes.tif")
            write_label_raster(label_raster, size)
            results[size]["label_raster"] = run_child(
                CHILD, raster, label_raster, os.path.join(tmp, "chips_raster"), "raster", env=env
            )
    return results


def report(results: dict) -> list[str]:
    lines = [
        "## Chip export memory",
        "",
        "Peak RSS of a fresh process exporting 256-px chips (no overlap) of a 4-band UInt16 raster "
        "with 400 label polygons.",
        "",
        "| raster | chips | seconds | chips/s | peak RSS | RSS at start |",
        "|---|---|---|---|---|---|",
    ]
    for size, r in results.items():
        lines.append(
            f"| {size}² | {r['chips']} | {r['seconds']:.1f} | {r['chips'] / r['seconds']:.0f} | "
            f"{r['peak_kb'] / 1024:.0f} MB | {r['import_kb'] / 1024:.0f} MB |"
        )
    lines += ["", growth_line(results), ""]
    lines += [
        "With a classified label raster (LABEL_RASTER) instead of polygons: Byte, EPSG:3857 at 1.3 m, warped "
        "strip by strip onto the raster's UTM 2 m grid (nearest neighbour, GDAL warped VRT).",
        "",
        "| raster | chips | seconds | chips/s | peak RSS | RSS at start |",
        "|---|---|---|---|---|---|",
    ]
    raster_runs = {size: r["label_raster"] for size, r in results.items() if "label_raster" in r}
    for size, r in raster_runs.items():
        lines.append(
            f"| {size}² | {r['chips']} | {r['seconds']:.1f} | {r['chips'] / r['seconds']:.0f} | "
            f"{r['peak_kb'] / 1024:.0f} MB | {r['import_kb'] / 1024:.0f} MB |"
        )
    return [*lines, "", growth_line(raster_runs, ", label raster; target ≤ 50 MB"), ""]
