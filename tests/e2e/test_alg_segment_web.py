"""Issue 17 (any raster layer): an XYZ layer from a tile server on 127.0.0.1 segmented over an EXTENT
through scripts/qgis_process equals the same pixels segmented from a GeoTIFF; a layer QGIS reads block
by block is copied exactly; TTA=2 with an equivariant model equals TTA=0."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest
import torch
from osgeo import gdal

from geoseg.core.card import CARD_KEY
from geoseg.models.export import export_onnx
from tests.core.test_core_predict import card
from tests.core.test_core_regions import conv_stack, symmetric_stack
from tests.support.helpers import make_raster, qgis_process

Z, TX, TY, NX, NY = 16, 35200, 21500, 3, 2  # zoom level and the block of tiles served
HALF = 20037508.342789244
PIXEL = 2 * HALF / (256 * 2**Z)
GT = (-HALF + TX * 256 * PIXEL, PIXEL, 0.0, HALF - TY * 256 * PIXEL, 0.0, -PIXEL)


def _scene() -> np.ndarray:
    yy, xx = np.mgrid[0 : NY * 256, 0 : NX * 256].astype(np.float64)
    rng = np.random.default_rng(7)
    bands = [128 + 100 * np.sin(xx / 23.0 + k) * np.cos(yy / 31.0 - k) + rng.normal(0, 8, xx.shape) for k in range(3)]
    return np.clip(np.stack(bands), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    mem = gdal.GetDriverByName("MEM").Create("", 256, 256, 3, gdal.GDT_Byte)
    for b in range(3):
        mem.GetRasterBand(b + 1).WriteArray(pixels[b])
    gdal.GetDriverByName("PNG").CreateCopy("/vsimem/tile.png", mem)
    f = gdal.VSIFOpenL("/vsimem/tile.png", "rb")
    gdal.VSIFSeekL(f, 0, 2)
    size = gdal.VSIFTellL(f)
    gdal.VSIFSeekL(f, 0, 0)
    data = gdal.VSIFReadL(1, size, f)
    gdal.VSIFCloseL(f)
    gdal.Unlink("/vsimem/tile.png")
    return bytes(data)


@pytest.fixture(scope="module")
def tile_server():
    """PNG tiles of `_scene` at level Z on 127.0.0.1 (404 elsewhere); stopped after the module."""
    scene = _scene()
    tiles = {
        f"/{Z}/{TX + i}/{TY + j}.png": _png(scene[:, j * 256 : (j + 1) * 256, i * 256 : (i + 1) * 256])
        for i in range(NX)
        for j in range(NY)
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = tiles.get(self.path.split("?")[0])
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", scene
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


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
