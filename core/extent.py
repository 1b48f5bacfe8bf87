"""EXTENT: the window of the input raster that segment reads ("xmin,xmax,ymin,ymax[ [EPSG:xxxx]]",
the form of Processing's extent parameter), as a virtual raster over the input on its own pixel grid:
nothing is copied, tiles are still read strip by strip from the source."""

from __future__ import annotations

import math
import re

from osgeo import gdal, osr

from .errors import GeoSegError

_CRS = re.compile(r"\s*\[([^\]]+)\]\s*$")


def parse_extent(text: str, name: str = "EXTENT") -> tuple[float, float, float, float, str | None]:
    """(xmin, xmax, ymin, ymax, crs or None) from 'xmin,xmax,ymin,ymax[ [EPSG:xxxx]]'."""
    crs = None
    m = _CRS.search(text)
    if m:
        crs, text = m.group(1).strip(), text[: m.start()]
    parts = [t.strip() for t in text.split(",")]
    try:
        xmin, xmax, ymin, ymax = (float(t) for t in parts)
    except ValueError:
        raise GeoSegError(
            f"{name}: expected 'xmin,xmax,ymin,ymax' optionally followed by ' [EPSG:xxxx]' (got {text!r}).",
            param=name,
        ) from None
    if not all(math.isfinite(v) for v in (xmin, xmax, ymin, ymax)) or xmin >= xmax or ymin >= ymax:
        raise GeoSegError(f"{name}: xmin must be below xmax and ymin below ymax (got {text!r}).", param=name)
    if crs is not None:
        srs = osr.SpatialReference()
        if srs.SetFromUserInput(crs) != 0:
            raise GeoSegError(f"{name}: unknown CRS {crs!r}.", param=name)
    return xmin, xmax, ymin, ymax, crs


def _in_raster_crs(box: tuple[float, float, float, float], crs: str, ds: gdal.Dataset) -> tuple[float, ...]:
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.SetFromUserInput(crs)
    dst.ImportFromWkt(ds.GetProjection())
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    xmin, xmax, ymin, ymax = box
    tx = osr.CoordinateTransformation(src, dst)
    out = tx.TransformBounds(xmin, ymin, xmax, ymax, 21)  # (minx, miny, maxx, maxy)
    return out[0], out[2], out[1], out[3]


def clip_to_extent(ds: gdal.Dataset, text: str, name: str = "EXTENT") -> tuple[gdal.Dataset, tuple[int, int, int, int]]:
    """A VRT of `ds` over the extent, snapped outwards to the raster's pixels (same grid, no resampling),
    and where `ds`'s blocks lie in it (core.raster.BlockGrid): reads aligned to those decode each block
    once (the VRT's own 128² blocks would cut most of them in two or four, each part decoding it all)."""
    xmin, xmax, ymin, ymax, crs = parse_extent(text, name)
    if crs is not None and ds.GetProjection():
        xmin, xmax, ymin, ymax = _in_raster_crs((xmin, xmax, ymin, ymax), crs, ds)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    cols = sorted(((xmin - x0) / dx, (xmax - x0) / dx))
    rows = sorted(((ymin - y0) / dy, (ymax - y0) / dy))
    c0, c1 = max(0, math.floor(cols[0] + 1e-6)), min(ds.RasterXSize, math.ceil(cols[1] - 1e-6))
    r0, r1 = max(0, math.floor(rows[0] + 1e-6)), min(ds.RasterYSize, math.ceil(rows[1] - 1e-6))
    if c1 <= c0 or r1 <= r0:
        raise GeoSegError(f"{name}: the area does not overlap the input raster.", param=name)
    bw, bh = ds.GetRasterBand(1).GetBlockSize()
    blocks = (bw, bh, -(c0 % bw), -(r0 % bh))
    return gdal.Translate("", ds, format="VRT", srcWin=[c0, r0, c1 - c0, r1 - r0]), blocks
