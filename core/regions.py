"""Cleaning and vectorising a finished class map: GDAL's sieve filter and polygonizer.

Both work on 4-connected regions (pixels that share an edge): a region is what one polygon covers,
so `SIEVE` removes exactly the regions that would become polygons smaller than it, and every
polygon is a simple, valid one in the common case (8-connected regions would join at corners).
The map's nodata (255) is kept out through its mask band: nodata never forms a region, is never
merged into a neighbour, and gives no polygon.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from osgeo import gdal, ogr, osr

from .errors import Cancelled, IsCancelled, Progress

log = logging.getLogger("geoseg")

CONNECTEDNESS = 4
VECTOR_LAYER = "regions"
COMMIT_EVERY = 20000  # features per GeoPackage transaction


def _callback(progress: Progress, cancelled: IsCancelled, start: float, span: float):
    def cb(fraction: float, *_args) -> int:
        progress(start + span * fraction)
        return 0 if cancelled() else 1

    return cb


MAX_SIEVE_PASSES = 8
GTIFF_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]


def sieve_in_place(path: str, threshold: int, progress: Progress, cancelled: IsCancelled) -> int:
    """Merge every region of fewer than `threshold` pixels of the class map `path` into its largest
    neighbour (gdal.SieveFilter, 4-connected, nodata masked out); the result replaces `path`, with the
    same colour table, nodata and overview levels (rebuilt from the sieved map). Returns the passes run.

    GDAL merges a small region only into a neighbour that is already as large as the threshold, so
    a pass can leave small regions among other small ones; passes repeat until one changes nothing
    (at most MAX_SIEVE_PASSES). Regions that touch only nodata (or only such small regions) stay."""
    src = gdal.Open(path)
    band = src.GetRasterBand(1)
    levels = [round(src.RasterXSize / band.GetOverview(i).XSize) for i in range(band.GetOverviewCount())]
    src = band = None
    temps = [path + ".sieve-a.tif", path + ".sieve-b.tif"]  # beside it, under its partial prefix
    current, passes = path, 0
    try:
        for passes in range(1, MAX_SIEVE_PASSES + 1):
            target = temps[passes % 2]
            _sieve_pass(current, target, threshold, _callback(progress, cancelled, 0.0, 0.8 / passes))
            if cancelled():
                raise Cancelled()
            changed = _differs(current, target)
            if current != path:
                os.remove(current)
            current = target
            progress(0.8 * passes / (passes + 1))
            if not changed:
                break
        if levels:
            dst = gdal.Open(current, gdal.GA_Update)
            dst.BuildOverviews("NEAREST", levels, callback=_callback(progress, cancelled, 0.8, 0.2))
            dst = None
            if cancelled():
                raise Cancelled()
        os.replace(current, path)
    finally:
        for t in temps:
            if os.path.exists(t):
                os.remove(t)
    return passes


def _sieve_pass(source: str, target: str, threshold: int, callback) -> None:
    src = gdal.Open(source)
    band = src.GetRasterBand(1)
    dst = gdal.GetDriverByName("GTiff").Create(
        target, src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Byte, GTIFF_OPTIONS
    )
    dst.SetGeoTransform(src.GetGeoTransform())
    dst.SetProjection(src.GetProjection())
    out = dst.GetRasterBand(1)
    if band.GetRasterColorTable() is not None:
        out.SetRasterColorTable(band.GetRasterColorTable())
        out.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    if band.GetNoDataValue() is not None:
        out.SetNoDataValue(band.GetNoDataValue())
    gdal.SieveFilter(band, band.GetMaskBand(), out, threshold, CONNECTEDNESS, callback=callback)


def _differs(a: str, b: str, rows: int = 256) -> bool:
    """Whether two single-band rasters of one size differ (read strip by strip)."""
    da, db = gdal.Open(a), gdal.Open(b)  # the datasets must outlive their bands
    ba, bb = da.GetRasterBand(1), db.GetRasterBand(1)
    for y in range(0, ba.YSize, rows):
        n = min(rows, ba.YSize - y)
        if not np.array_equal(ba.ReadAsArray(0, y, ba.XSize, n), bb.ReadAsArray(0, y, bb.XSize, n)):
            return True
    return False


def _area_scale(srs: osr.SpatialReference | None) -> tuple[float, str]:
    """(factor to square metres, unit) for the map's CRS; square map units when not projected."""
    if srs is not None and srs.IsProjected():
        return srs.GetLinearUnits() ** 2, "m²"
    return 1.0, "square map units"


def polygonize(
    raster_path: str,
    vector_path: str,
    class_names: dict[int, str],
    progress: Progress,
    cancelled: IsCancelled,
) -> int:
    """Write one polygon per 4-connected region of the class map (gdal.Polygonize over the whole
    map with its mask band, so nodata gives none) to the new GeoPackage `vector_path`, layer
    'regions': `value` (class value), `name` (class name), `area` (m² in a projected CRS, else
    square map units). Invalid geometries are repaired with MakeValid. Returns the feature count."""
    src = gdal.Open(raster_path)
    band = src.GetRasterBand(1)
    srs = src.GetSpatialRef()
    scale, unit = _area_scale(srs)
    if unit != "m²":
        log.warning("OUTPUT_VECTOR: the class map's CRS is not projected; areas are in square map units.")
    out = ogr.GetDriverByName("GPKG").CreateDataSource(vector_path)
    raw = out.CreateLayer("polygonize_raw", srs, ogr.wkbPolygon)
    raw.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    raw.StartTransaction()
    gdal.Polygonize(
        band,
        band.GetMaskBand(),
        raw,
        0,
        [f"8CONNECTED={CONNECTEDNESS}"] if CONNECTEDNESS == 8 else [],
        callback=_callback(progress, cancelled, 0.0, 0.7),
    )
    raw.CommitTransaction()
    if cancelled():
        raise Cancelled()
    layer = out.CreateLayer(VECTOR_LAYER, srs, ogr.wkbMultiPolygon, ["FID=fid", "GEOMETRY_NAME=geom"])
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("area", ogr.OFTReal))
    n, repaired, total = 0, 0, max(1, raw.GetFeatureCount())
    defn = layer.GetLayerDefn()
    layer.StartTransaction()
    for feature in raw:
        geom = feature.GetGeometryRef()
        if not geom.IsValid():
            geom = _polygonal(geom.MakeValid())
            repaired += 1
        value = feature.GetField(0)
        f = ogr.Feature(defn)
        f.SetField("value", value)
        f.SetField("name", class_names.get(value, str(value)))
        f.SetField("area", geom.GetArea() * scale)
        f.SetGeometry(ogr.ForceToMultiPolygon(geom))
        layer.CreateFeature(f)
        n += 1
        if n % COMMIT_EVERY == 0:
            layer.CommitTransaction()
            layer.StartTransaction()
            progress(0.7 + 0.3 * n / total)
            if cancelled():
                raise Cancelled()
    layer.CommitTransaction()
    raw = None
    out.DeleteLayer("polygonize_raw")
    out.ExecuteSQL("VACUUM")
    out = None
    if repaired:
        log.info("OUTPUT_VECTOR: %d of %d polygons were repaired with MakeValid.", repaired, n)
    progress(1.0)
    return n


def _polygonal(geom: ogr.Geometry) -> ogr.Geometry:
    """The polygonal part of MakeValid's result (it may add lines or points of a touching ring)."""
    if geom.GetGeometryType() in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
        return geom
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    for i in range(geom.GetGeometryCount()):
        g = geom.GetGeometryRef(i)
        if g.GetGeometryType() == ogr.wkbPolygon:
            parts.AddGeometry(g)
        elif g.GetGeometryType() == ogr.wkbMultiPolygon:
            for j in range(g.GetGeometryCount()):
                parts.AddGeometry(g.GetGeometryRef(j))
    return parts
