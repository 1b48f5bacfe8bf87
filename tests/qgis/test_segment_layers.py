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


XYZ = "type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=14&zmin=0"


def test_dialog_segments_a_web_layer_over_the_canvas_extent(segment_dialog, qgis_iface, model, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject

    from tests.support.segment_fixtures import setup

    layer = QgsRasterLayer(XYZ, "tiles", "wms")
    QgsProject.instance().addMapLayer(layer)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    canvas.setExtent(QgsRectangle(1000.0, 2000.0, 5000.0, 4000.0))
    setup(segment_dialog, layer, model, tmp_path / "out.tif")
    p = segment_dialog.params()
    assert p.input_path.endswith(".xml") and "<GDAL_WMS>" in open(p.input_path, encoding="utf-8").read()
    xmin, xmax, ymin, ymax = (float(v) for v in p.extent.split(" [")[0].split(","))
    assert p.extent.endswith("[EPSG:3857]") and xmin < 1000.0 + 1e-6 and xmax > 5000.0 - 1e-6
    segment_dialog.fields["extent"].setText("10,20,30,40")
    assert segment_dialog.params().extent == "10,20,30,40"  # what the user typed wins


def test_segment_refuses_a_web_layer_without_extent(geoseg_provider, model, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    layer = QgsRasterLayer(XYZ, "tiles", "wms")
    with pytest.raises(QgsProcessingException, match="EXTENT"):
        processing.run("geoseg:segment", {"INPUT": layer, "MODEL": model, "OUTPUT": str(tmp_path / "o.tif")})
