"""Issue 17 (any raster layer): an XYZ layer from a tile server and a WMS layer, both on 127.0.0.1
(tests.support.web_servers), segmented over an EXTENT through scripts/qgis_process equal the same pixels
segmented from a GeoTIFF; TTA=2 with an equivariant model equals TTA=0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from osgeo import gdal

from geoseg.core.card import CARD_KEY
from geoseg.models.export import export_onnx
from tests.core.test_core_predict import card
from tests.core.test_core_regions import conv_stack, symmetric_stack
from tests.support.helpers import make_raster, qgis_process
from tests.support.web_servers import WmsScene, png, serve, xyz_tiles

Z, TX, TY, NX, NY = 16, 35200, 21500, 3, 2  # zoom level and the block of tiles served
HALF = 20037508.342789244
PIXEL = 2 * HALF / (256 * 2**Z)
GT = (-HALF + TX * 256 * PIXEL, PIXEL, 0.0, HALF - TY * 256 * PIXEL, 0.0, -PIXEL)


def _scene() -> np.ndarray:
    yy, xx = np.mgrid[0 : NY * 256, 0 : NX * 256].astype(np.float64)
    rng = np.random.default_rng(7)
    bands = [128 + 100 * np.sin(xx / 23.0 + k) * np.cos(yy / 31.0 - k) + rng.normal(0, 8, xx.shape) for k in range(3)]
    return np.clip(np.stack(bands), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tile_server():
    """PNG tiles of `_scene` at level Z on 127.0.0.1 (404 elsewhere); stopped after the module."""
    scene = _scene()
    tiles = {
        f"/{Z}/{TX + i}/{TY + j}.png": png(scene[:, j * 256 : (j + 1) * 256, i * 256 : (i + 1) * 256])
        for i in range(NX)
        for j in range(NY)
    }
    with serve(xyz_tiles(tiles)) as url:
        yield url, scene


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("webmodels")
    c = card() | {"normalization": {"mean": [128.0, 120.0, 125.0], "std": [50.0, 60.0, 55.0]}}
    path = str(root / "symmetric.onnx")
    export_onnx(symmetric_stack(), 3, path, metadata={CARD_KEY: json.dumps(c)})
    return path


def _run(*params: str) -> None:
    proc = qgis_process("run", "geoseg:segment", "--", *params)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_xyz_layer_equals_the_file(tile_server, models, tmp_path):
    url, scene = tile_server
    reference = str(tmp_path / "scene.tif")
    ds = gdal.GetDriverByName("GTiff").Create(reference, scene.shape[2], scene.shape[1], 3, gdal.GDT_Byte)
    ds.SetGeoTransform(GT)
    ds.SetProjection(_epsg3857())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(scene[b])
    ds = None
    x0, y0 = GT[0] + 70.3 * PIXEL, GT[3] - 40.6 * PIXEL  # not on a tile or pixel edge
    extent = f"{x0},{x0 + 500 * PIXEL},{y0 - 300 * PIXEL},{y0} [EPSG:3857]"
    common = ["RESOLUTION=1", "CHIP_SIZE=32", "STRIDE_X=24", "STRIDE_Y=24", "CROP=4", f"EXTENT={extent}"]
    xyz = f"wms://type=xyz&url={url}/{{z}}/{{x}}/{{y}}.png&zmax={Z}&zmin=0"
    _run(f"INPUT={xyz}", f"MODEL={models}", f"OUTPUT={tmp_path / 'web.tif'}", *common)
    _run(f"INPUT={reference}", f"MODEL={models}", f"OUTPUT={tmp_path / 'file.tif'}", *common)
    web, file = gdal.Open(str(tmp_path / "web.tif")), gdal.Open(str(tmp_path / "file.tif"))
    assert (web.RasterXSize, web.RasterYSize) == (file.RasterXSize, file.RasterYSize) == (501, 301)
    assert web.GetGeoTransform() == pytest.approx(file.GetGeoTransform())
    assert np.array_equal(web.ReadAsArray(), file.ReadAsArray())
    assert len(np.unique(file.ReadAsArray())) > 1


def test_wms_layer_equals_the_file(models, tmp_path):
    """A one-layer WMS (tests.support.web_servers) in EPSG:3857 read at the scene's own pixel size: the
    copy Processing makes of it holds the file's pixels, so the class maps are equal."""
    scene, reference = _scene(), str(tmp_path / "scene.tif")
    ds = gdal.GetDriverByName("GTiff").Create(reference, scene.shape[2], scene.shape[1], 3, gdal.GDT_Byte)
    ds.SetGeoTransform(GT)
    ds.SetProjection(_epsg3857())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(scene[b])
    ds = None
    wms = WmsScene(scene, GT[0], GT[3], PIXEL, "EPSG:3857")
    x0, y0 = GT[0] + 40 * PIXEL, GT[3] - 30 * PIXEL  # on pixel edges: the copy's grid is the scene's
    extent = f"{x0!r},{x0 + 400 * PIXEL!r},{y0 - 250 * PIXEL!r},{y0!r} [EPSG:3857]"
    common = ["RESOLUTION=2", f"PIXEL_SIZE={PIXEL!r}", "CHIP_SIZE=32", "STRIDE_X=24", "STRIDE_Y=24", "CROP=4"]
    common += [f"EXTENT={extent}", f"MODEL={models}"]
    with serve(wms) as url:
        _run(f"INPUT=wms://{wms.layer_uri(url)}", f"OUTPUT={tmp_path / 'wms.tif'}", *common)
    _run(f"INPUT={reference}", f"OUTPUT={tmp_path / 'file.tif'}", *common)
    web, file = gdal.Open(str(tmp_path / "wms.tif")), gdal.Open(str(tmp_path / "file.tif"))
    assert wms.requests and (file.RasterXSize, file.RasterYSize) == (400, 250)
    assert web.GetGeoTransform() == pytest.approx(file.GetGeoTransform())
    assert np.array_equal(web.ReadAsArray(), file.ReadAsArray()) and len(np.unique(file.ReadAsArray())) > 1


def test_tta_all_views_with_an_equivariant_model_equals_none(models, tmp_path):
    raster = str(tmp_path / "scene.tif")
    make_raster(raster, 150, 110, bands=3)
    common = ["RESOLUTION=1", "CHIP_SIZE=32", "STRIDE_X=24", "STRIDE_Y=24", "CROP=4", f"MODEL={models}"]
    _run(f"INPUT={raster}", f"OUTPUT={tmp_path / 'tta0.tif'}", "TTA=0", *common)
    _run(f"INPUT={raster}", f"OUTPUT={tmp_path / 'tta2.tif'}", "TTA=2", *common)
    a, b = (gdal.Open(str(tmp_path / f"tta{k}.tif")).ReadAsArray() for k in (0, 2))
    assert np.array_equal(a, b)


def test_tta_all_views_with_a_generic_model_differs(tmp_path):
    """The same runs with a network that is not equivariant: the 8 views disagree, so the average differs."""
    raster, model = str(tmp_path / "scene.tif"), str(tmp_path / "generic.onnx")
    make_raster(raster, 150, 110, bands=3)
    torch.manual_seed(0)
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    common = ["RESOLUTION=1", "CHIP_SIZE=32", "STRIDE_X=24", "STRIDE_Y=24", "CROP=4", f"MODEL={model}"]
    _run(f"INPUT={raster}", f"OUTPUT={tmp_path / 'tta0.tif'}", "TTA=0", *common)
    _run(f"INPUT={raster}", f"OUTPUT={tmp_path / 'tta2.tif'}", "TTA=2", *common)
    a, b = (gdal.Open(str(tmp_path / f"tta{k}.tif")).ReadAsArray() for k in (0, 2))
    assert (a != b).sum() > 0
    assert np.array_equal(a == 255, b == 255)  # nodata stays nodata


def _epsg3857() -> str:
    from osgeo import osr

    s = osr.SpatialReference()
    s.ImportFromEPSG(3857)
    return s.ExportToWkt()
