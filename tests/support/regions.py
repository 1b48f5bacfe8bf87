"""Issue 17 test helpers: 4-connected regions of a class map (a plain flood fill, no scipy) and
polygons burnt back onto the class map's grid."""

from __future__ import annotations

from collections import deque

import numpy as np
from osgeo import gdal


def regions(classes: np.ndarray, nodata: int = 255) -> list[tuple[int, int]]:
    """(class value, pixel count) of each 4-connected region, nodata excluded."""
    seen = np.zeros(classes.shape, bool)
    out = []
    h, w = classes.shape
    for y0 in range(h):
        for x0 in range(w):
            if seen[y0, x0] or classes[y0, x0] == nodata:
                continue
            value, n, queue = classes[y0, x0], 0, deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                n += 1
                for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= yy < h and 0 <= xx < w and not seen[yy, xx] and classes[yy, xx] == value:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
            out.append((int(value), n))
    return out


def rasterize(vector: str, like: str, layer: str = "regions", nodata: int = 255) -> np.ndarray:
    """The polygons' `value` burnt onto the grid of the raster `like` (pixel-centre rule), nodata elsewhere."""
    src = gdal.Open(like)
    dst = gdal.GetDriverByName("MEM").Create("", src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Byte)
    dst.SetGeoTransform(src.GetGeoTransform())
    dst.SetProjection(src.GetProjection())
    dst.GetRasterBand(1).Fill(nodata)
    gdal.Rasterize(dst, vector, layers=[layer], attribute="value")
    return dst.ReadAsArray()
