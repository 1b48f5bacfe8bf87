"""Issue 18, read once: segment decodes every input block once per run.

The reader asks GDAL (through `read_window`) for whole block rows in whole blocks, each pixel
once, and keeps the rows shared by consecutive strips; the tiles it builds from them give the
same map as whole-image inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from geoseg.core import predict
from geoseg.core.card import CARD_KEY
from geoseg.core.predict import SegmentParams, segment
from geoseg.models.export import export_onnx
from tests.core.test_core_predict import card, conv_stack, whole_image
from tests.support.helpers import make_raster

W, H, BLOCK = 203, 157, 32


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """A DEFLATE GeoTIFF in 32 × 32 blocks with a nodata hole, and a model of radius 3."""
    root = tmp_path_factory.mktemp("read_once")
    plain, raster = str(root / "plain.tif"), str(root / "tiled.tif")
    pixels = make_raster(plain, W, H, bands=3, hole=(60, 40, 17, 13))
    opts = ["TILED=YES", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}", "COMPRESS=DEFLATE"]
    gdal.Translate(raster, plain, creationOptions=opts)
    model = str(root / "conv.onnx")
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    return raster, model, pixels


@pytest.fixture
def reads(monkeypatch):
    """Every window the segment reader asks GDAL for."""
    seen: list = []
    real = predict.read_window

    def counting(ds, info, win):
        seen.append(win)
        return real(ds, info, win)

    monkeypatch.setattr(predict, "read_window", counting)
    return seen


@pytest.mark.parametrize("chip, stride, crop, batch", [(32, 26, 3, 3), (48, 20, 4, 2), (64, 58, 3, 8)])
def test_each_pixel_is_read_once_in_whole_blocks(tiled, tmp_path, reads, chip, stride, crop, batch):
    raster, model, pixels = tiled
    out = str(tmp_path / "c.tif")
    segment(
        SegmentParams(raster, model, out, chip_size=chip, stride_x=stride, stride_y=stride, crop=crop, batch_size=batch)
    )
    times = np.zeros((H, W), dtype=int)
    for win in reads:
        times[win.yoff : win.yoff + win.height, win.xoff : win.xoff + win.width] += 1
        assert win.xoff % BLOCK == 0 and win.yoff % BLOCK == 0  # starts on a block boundary
        assert (win.xoff + win.width) % BLOCK == 0 or win.xoff + win.width == W  # ends on one, or at the edge
        assert (win.yoff + win.height) % BLOCK == 0 or win.yoff + win.height == H
    assert times.min() == times.max() == 1  # strips overlap by chip − stride rows, tiles by chip − stride columns
    ref, _ = whole_image(model, pixels, card())
    np.testing.assert_array_equal(gdal.Open(out).ReadAsArray(), ref)


def test_a_raster_smaller_than_a_chip_is_read_once_and_padded(tmp_path, tiled, reads):
    _, model, _ = tiled
    raster = str(tmp_path / "small.tif")
    pixels = make_raster(raster, 21, 17, bands=3)
    out = str(tmp_path / "c.tif")
    segment(SegmentParams(raster, model, out, chip_size=32, stride_x=26, stride_y=26, crop=3))
    assert [(w.xoff, w.yoff, w.width, w.height) for w in reads] == [(0, 0, 21, 17)]
    padded = np.pad(pixels, ((0, 0), (0, 32 - 17), (0, 32 - 21)))  # padding is nodata: 0 after normalising
    ref, _ = whole_image(model, padded, card())
    np.testing.assert_array_equal(gdal.Open(out).ReadAsArray(), ref[:17, :21])
