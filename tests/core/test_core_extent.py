"""EXTENT (issue 17): parsed like Processing's extent text, read as a pixel-snapped window of the input."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from geoseg.core.errors import GeoSegError
from geoseg.core.extent import clip_to_extent, parse_extent
from tests.support.helpers import make_raster


def test_parse():
    assert parse_extent("1,2,3,4") == (1.0, 2.0, 3.0, 4.0, None)
    assert parse_extent("1, 2, 3, 4 [EPSG:3857]") == (1.0, 2.0, 3.0, 4.0, "EPSG:3857")
    for bad in ("1,2,3", "a,b,c,d", "2,1,3,4", "1,2,3,4 [EPSG:nope]"):
        with pytest.raises(GeoSegError, match="EXTENT") as e:
            parse_extent(bad)
        assert e.value.param == "EXTENT"


def test_window_is_snapped_outwards_on_the_raster_grid(tmp_path):
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 60, 40, bands=3)
    ds = gdal.Open(raster)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    vrt, blocks = clip_to_extent(ds, f"{x0 + 5.5 * dx},{x0 + 20.2 * dx},{y0 + 30.1 * dy},{y0 + 10.9 * dy}")
    assert (vrt.RasterXSize, vrt.RasterYSize) == (16, 21)
    bw, bh = ds.GetRasterBand(1).GetBlockSize()
    assert blocks == (bw, bh, -(5 % bw), -(10 % bh))  # where the raster's blocks start, in the window's pixels
    assert vrt.GetGeoTransform() == pytest.approx((x0 + 5 * dx, dx, 0, y0 + 10 * dy, 0, dy))
    assert np.array_equal(vrt.ReadAsArray(), ds.ReadAsArray(5, 10, 16, 21))
    with pytest.raises(GeoSegError, match="does not overlap"):
        clip_to_extent(ds, f"{x0 - 10 * dx},{x0 - 5 * dx},{y0 + dy},{y0}")
