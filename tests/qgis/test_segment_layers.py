"""Issue 17 (any raster layer): adapter.layers turns an XYZ layer into a GDAL WMS description and
copies a layer QGIS reads block by block into a GeoTIFF over an extent, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsRasterLayer, QgsRectangle

from geoseg.adapter.layers import WEB_MERCATOR_HALF, gdal_raster_source, raster_source, render_to_geotiff
from geoseg.core.errors import GeoSegError
from tests.support.helpers import make_raster


def test_xyz_layer_is_a_gdal_wms_description(qgis_app, tmp_path):
    uri = "type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=12&zmin=0"
    layer = QgsRasterLayer(uri, "tiles", "wms")
    path = gdal_raster_source(layer, "INPUT", folder=str(tmp_path))
    text = open(path, encoding="utf-8").read()
    assert "http://127.0.0.1:9/${z}/${x}/${y}.png" in text and "<TileLevel>12</TileLevel>" in text
    ds = gdal.Open(path)
    assert (ds.RasterCount, ds.RasterXSize) == (3, 256 * 2**12)
    assert ds.GetGeoTransform()[0] == pytest.approx(-WEB_MERCATOR_HALF)
    with pytest.raises(GeoSegError, match="wms provider"):
        raster_source(layer)  # the steps that read a whole layer still want a GDAL one


def test_a_layer_read_block_by_block_equals_its_pixels(qgis_app, tmp_path):
    raster = str(tmp_path / "scene.tif")
    make_raster(raster, 150, 110, bands=3)
    src = gdal.Open(raster)
    x0, dx, _, y0, _, dy = src.GetGeoTransform()
    layer = QgsRasterLayer(raster, "scene", "gdal")
    area = QgsRectangle(x0 + 10 * dx, y0 + 80 * dy, x0 + 130 * dx, y0 + 20 * dy)
    out = render_to_geotiff(layer, area, str(tmp_path / "copy.tif"))
    copy = gdal.Open(out)
    assert (copy.RasterXSize, copy.RasterYSize) == (120, 60)
    assert copy.GetGeoTransform() == pytest.approx((x0 + 10 * dx, dx, 0, y0 + 20 * dy, 0, dy))
    assert np.array_equal(copy.ReadAsArray(), src.ReadAsArray(10, 20, 120, 60))
