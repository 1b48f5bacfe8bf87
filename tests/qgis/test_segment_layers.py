"""Issue 17 (any raster layer): adapter.layers turns an XYZ layer into a GDAL WMS description and
copies a layer QGIS reads block by block into a GeoTIFF over an extent, pixel for pixel."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsRasterLayer, QgsRectangle

from geoseg.adapter.layers import WEB_MERCATOR_HALF, gdal_raster_source, raster_source, render_to_geotiff
from geoseg.core.errors import GeoSegError
from tests.support.helpers import make_raster
from tests.support.layer_fixtures import H, W, classes, one_band_scene, virtual_layer, window


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


# ---------------------------------------------------------------- non-GDAL layers, end to end
@pytest.fixture(scope="module")
def one_band(tmp_path_factory):
    return one_band_scene(str(tmp_path_factory.mktemp("oneband")))


def requested(scene) -> int:
    """Pixels the WMS was asked for."""
    return sum(w * h for _, w, h in scene.requests)


def processing_copies() -> list[str]:
    """Layer copies left in Processing's temporary folder (segment removes its own after a run)."""
    from qgis.core import QgsProcessingUtils

    return [n for n in os.listdir(QgsProcessingUtils.tempFolder()) if n.startswith("geoseg-layer-")]


def _run_dialog(dlg, app, layer, model, out, **fields):
    from tests.support.helpers import wait_for
    from tests.support.segment_fixtures import setup

    setup(dlg, layer, model, out)
    for name, text in fields.items():
        dlg.fields[name].setText(text)
    p = dlg.validate_inputs()
    assert p is not None and not os.path.exists(p.input_path), dlg.messageLabel.text()  # the task copies
    task = dlg.run()
    assert task is not None, dlg.messageLabel.text()
    wait_for(dlg, app)
    return task


def test_virtual_raster_through_the_dialog_and_processing_equals_the_file(
    segment_dialog, qgis_app, geoseg_provider, one_band, tmp_path, monkeypatch
):
    import processing
    from qgis.core import QgsProject

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the copies' folders: all removed
    os.makedirs(tempfile.tempdir)
    raster, model = one_band
    layer = virtual_layer(raster)
    QgsProject.instance().addMapLayer(layer)
    _run_dialog(segment_dialog, qgis_app, layer, model, tmp_path / "dialog.tif")
    assert segment_dialog.last_error is None, segment_dialog.last_error
    assert segment_dialog.progress.value() == 100
    processing.run("geoseg:segment", {"INPUT": layer, "MODEL": model, "OUTPUT": str(tmp_path / "alg.tif")})
    processing.run("geoseg:segment", {"INPUT": raster, "MODEL": model, "OUTPUT": str(tmp_path / "file.tif")})
    file = classes(tmp_path / "file.tif")
    assert file.shape == (H, W) and len(np.unique(file)) == 3
    assert np.array_equal(classes(tmp_path / "alg.tif"), file)
    assert np.array_equal(classes(tmp_path / "dialog.tif"), file)
    assert os.listdir(tempfile.tempdir) == [] and processing_copies() == []


@pytest.fixture()
def wms(qgis_app, tmp_path_factory):
    """A WMS on 127.0.0.1 showing a 3-band scene (2 m, EPSG:32633) and the same pixels as a GeoTIFF."""
    from tests.support.helpers import ORIGIN
    from tests.support.web_servers import WmsScene, serve

    raster = str(tmp_path_factory.mktemp("wms") / "scene.tif")
    pixels = make_raster(raster, W, H, bands=3, dtype=gdal.GDT_Byte, nodata=None)
    scene = WmsScene(pixels.astype(np.uint8), ORIGIN[0], ORIGIN[1], 2.0, "EPSG:32633")
    with serve(scene) as url:
        layer = QgsRasterLayer(scene.layer_uri(url), "wms", "wms")
        assert layer.isValid() and layer.providerType() == "wms"
        yield layer, scene, raster


def test_wms_layer_through_the_dialog_and_processing_equals_the_file(
    segment_dialog, qgis_app, geoseg_provider, model, wms, tmp_path, monkeypatch
):
    """The copy is read at the card's 2 m on the scene's own grid, so the WMS returns the file's pixels
    exactly (the server samples pixel centres) and the class maps are equal."""
    import processing
    from qgis.core import QgsProject

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    layer, scene, raster = wms
    QgsProject.instance().addMapLayer(layer)
    extent = window(10, 6, 130, 100)
    _run_dialog(segment_dialog, qgis_app, layer, model, tmp_path / "dialog.tif", extent=extent)
    assert segment_dialog.last_error is None, segment_dialog.last_error
    assert scene.requests and all(w <= 130 and h <= 100 for _, w, h in scene.requests)
    common = {"MODEL": model, "EXTENT": extent}
    processing.run("geoseg:segment", {"INPUT": layer, "OUTPUT": str(tmp_path / "alg.tif"), **common})
    processing.run("geoseg:segment", {"INPUT": raster, "OUTPUT": str(tmp_path / "file.tif"), **common})
    file = gdal.Open(str(tmp_path / "file.tif"))
    assert (file.RasterXSize, file.RasterYSize) == (130, 100) and len(np.unique(file.ReadAsArray())) > 1
    for name in ("dialog.tif", "alg.tif"):
        got = gdal.Open(str(tmp_path / name))
        assert got.GetGeoTransform() == pytest.approx(file.GetGeoTransform()), name
        assert np.array_equal(got.ReadAsArray(), file.ReadAsArray()), name
    assert os.listdir(tempfile.tempdir) == [] and processing_copies() == []


def test_cancel_during_the_copy_leaves_nothing(
    segment_dialog, qgis_app, geoseg_provider, model, wms, tmp_path, monkeypatch
):
    """Cancelled while the WMS answers its first block of a copy at 0.25 m (8 × 8 times the scene's
    pixels, blocks of 500 × 500): the copy stops before it has asked for them all, and neither the copy,
    its folder nor any output remains; Processing's feedback cancels the same way."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsProject

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    layer, scene, _ = wms
    QgsProject.instance().addMapLayer(layer)
    segment_dialog.fields["pixel_size"].setValue(0.25)  # 8 × the scene's pixels: a copy of many blocks
    segment_dialog.fields["resolution"].setCurrentIndex(2)
    scene.on_getmap = lambda: segment_dialog.cancel()
    _run_dialog(segment_dialog, qgis_app, layer, model, tmp_path / "dialog.tif", extent=window(0, 0, W, H))
    assert segment_dialog.last_result is None and "Cancelled" in (segment_dialog.last_error or "")
    assert 0 < requested(scene) < (8 * W) * (8 * H)  # stopped during the copy
    assert sorted(os.listdir(tmp_path)) == ["tmp"] and os.listdir(tempfile.tempdir) == []

    feedback = QgsProcessingFeedback()
    scene.requests.clear()
    scene.on_getmap = feedback.cancel
    params = {"INPUT": layer, "MODEL": model, "OUTPUT": str(tmp_path / "alg.tif"), "EXTENT": window(0, 0, W, H)}
    params |= {"RESOLUTION": 2, "PIXEL_SIZE": 0.25}
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        processing.run("geoseg:segment", params, feedback=feedback)
    assert 0 < requested(scene) < (8 * W) * (8 * H)
    assert sorted(os.listdir(tmp_path)) == ["tmp"] and processing_copies() == []
