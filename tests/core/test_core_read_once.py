"""Issue 18, read once: segment decodes every input block once per run.

The reader asks GDAL (through `read_window`) for whole block rows in whole blocks, each pixel
once, and keeps the rows shared by consecutive strips; the tiles it builds from them give the
same map as whole-image inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from geoseg.core import stream
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
    real = stream.read_window

    def counting(ds, info, win, *into):
        seen.append(win)
        return real(ds, info, win, *into)

    monkeypatch.setattr(stream, "read_window", counting)
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


def test_an_extent_window_is_read_in_the_rasters_own_blocks(tiled, tmp_path, reads, monkeypatch):
    """EXTENT reads a VRT window whose edges cut through the raster's blocks: the reads follow the
    raster's blocks, not the window's, so each block is decoded once (between two flushes of GDAL's
    cache, the reads cover whole blocks) and each pixel read once; the map is whole-image inference."""
    raster, model, pixels = tiled
    real_flush = stream.flush
    monkeypatch.setattr(stream, "flush", lambda *ds: (reads.append(None), real_flush(*ds)))
    monkeypatch.setattr(stream, "READ_COLUMNS", BLOCK)  # several reads across (the VRT's blocks are 128²)
    x0, dx, _, y0, _, dy = gdal.Open(raster).GetGeoTransform()
    c0, r0, w, h = 10, 7, 150, 150
    extent = f"{x0 + c0 * dx},{x0 + (c0 + w) * dx},{y0 + (r0 + h) * dy},{y0 + r0 * dy}"
    out = str(tmp_path / "c.tif")
    p = SegmentParams(raster, model, out, chip_size=32, stride_x=26, stride_y=26, crop=3, batch_size=3, extent=extent)
    segment(p)
    times = np.zeros((h, w), dtype=int)
    group: list = []
    for win in reads:
        if win is not None:
            times[win.yoff : win.yoff + win.height, win.xoff : win.xoff + win.width] += 1
            group.append(win)
            continue
        top, bottom = min(g.yoff for g in group), max(g.yoff + g.height for g in group)
        left, right = min(g.xoff for g in group), max(g.xoff + g.width for g in group)
        assert (top + r0) % BLOCK == 0 or top == 0
        assert (bottom + r0) % BLOCK == 0 or bottom == h
        assert (left + c0) % BLOCK == 0 or left == 0
        assert (right + c0) % BLOCK == 0 or right == w
        group = []
    assert times.min() == times.max() == 1
    ref, _ = whole_image(model, pixels[:, r0 : r0 + h, c0 : c0 + w], card())
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


@pytest.mark.parametrize("chip, stride", [(32, 26), (48, 20), (64, 58)])
def test_the_ring_of_rows_hands_out_each_strip_as_the_raster_has_it(tiled, chip, stride):
    """Shared rows are never moved: raster row y lives in ring row y mod R, and a strip that runs over
    the end of the ring comes as two pieces that together are exactly the strip's rows."""
    from geoseg.core.grid import make_tiling
    from geoseg.core.raster import open_raster, raster_info

    raster, _, pixels = tiled
    ds = open_raster(raster)
    info = raster_info(ds, raster)
    tiling = make_tiling(W, H, chip, stride, stride, 3)
    cache = stream._RowCache(ds, info, tiling)
    assert cache.ring % BLOCK == 0  # a read split at the ring's end is still a read of whole blocks
    pieces = []
    for si, oy in enumerate(tiling.ys):
        strip = cache.strip(oy)
        cache.upto(W)  # the strip's missing rows, as its batches ask for them
        if si + 1 < len(tiling.ys):
            cache.plan(tiling.ys[si + 1])
            cache.fetch(len(cache.pending))  # all of the next strip's reads, as a strip's batches spread them
        np.testing.assert_array_equal(
            np.concatenate([p for p, _ in strip], axis=1)[:, :, :W], pixels[:, oy : oy + chip]
        )
        valid = (pixels[:, oy : oy + chip] != 0).all(axis=0)
        np.testing.assert_array_equal(np.concatenate([v for _, v in strip])[:, :W], valid)
        assert len(strip) == (2 if oy % cache.ring + chip > cache.ring else 1)
        pieces.append(len(strip))
    assert 2 in pieces or chip == 64  # the first two tilings run over the ring's end


def test_the_first_batch_waits_only_for_the_blocks_it_covers(tiled, monkeypatch, reads):
    """The first strip's rows are read column range by column range as its batches reach them: the
    model starts after the first tiles' blocks are decoded, not after a whole block row of the raster."""
    from geoseg.core.grid import make_tiling
    from geoseg.core.raster import open_raster, raster_info

    monkeypatch.setattr(stream, "READ_COLUMNS", BLOCK)
    raster, _, pixels = tiled
    ds = open_raster(raster)
    info = raster_info(ds, raster)
    tiling = make_tiling(W, H, 32, 26, 26, 3)
    cache = stream._RowCache(ds, info, tiling)
    strip = cache.strip(0)
    assert reads == []  # nothing decoded yet
    cache.upto(tiling.xs[1] + 32)  # a batch of the first two tiles: columns 0-58
    assert sorted({w.xoff for w in reads}) == [0, 32]
    assert all(w.yoff == 0 and w.height == 32 for w in reads)
    np.testing.assert_array_equal(strip[0][0][:, :, :58], pixels[:, :32, :58])
    cache.upto(W)
    np.testing.assert_array_equal(strip[0][0][:, :, :W], pixels[:, :32])
    assert len(reads) == -(-W // BLOCK)  # each column range once


@pytest.mark.parametrize("dtype, nodata", [(gdal.GDT_UInt16, 0), (gdal.GDT_Float32, float("nan"))])
def test_reading_into_the_cache_equals_a_plain_read(tmp_path, dtype, nodata):
    """The row cache has GDAL decode straight into its buffer: same pixels and validity as a plain
    read, nothing outside the window touched."""
    from geoseg.core.grid import Window
    from geoseg.core.raster import open_raster, raster_info, read_window

    path = str(tmp_path / "r.tif")
    make_raster(path, 50, 40, bands=3, dtype=dtype, nodata=nodata, hole=(8, 5, 6, 4))
    ds = open_raster(path)
    info = raster_info(ds, path)
    win = Window(4, 2, 20, 12)
    pixels, valid = read_window(ds, info, win)
    assert 0 < valid.sum() < valid.size
    buf = np.full((3, 30, 60), 7, dtype=info.dtype)
    mask = np.zeros((30, 60), dtype=bool)
    got = read_window(ds, info, win, (buf[:, 5:17, 30:50], mask[5:17, 30:50]))
    np.testing.assert_array_equal(buf[:, 5:17, 30:50], pixels)
    np.testing.assert_array_equal(mask[5:17, 30:50], valid)
    np.testing.assert_array_equal(got[1], valid)
    buf[:, 5:17, 30:50], mask[5:17, 30:50] = 7, False
    assert (buf == 7).all() and not mask.any()


def test_any_valid_pixel_looks_at_one_block_first_and_then_everywhere(tmp_path, monkeypatch):
    """segment's "every pixel is nodata" check: a valid centre block answers at once (one block read,
    not a row of blocks); a raster valid only in a corner or nowhere is still judged right."""
    from geoseg.core import raster
    from geoseg.core.raster import any_valid_pixel, open_raster, raster_info

    reads: list = []
    real = raster.read_window
    monkeypatch.setattr(raster, "read_window", lambda ds, info, win: reads.append(win) or real(ds, info, win))

    opts = ["TILED=YES", "BLOCKXSIZE=32", "BLOCKYSIZE=32"]
    cases = {"centre": (slice(40, 60), slice(50, 70)), "corner": (slice(0, 2), slice(0, 2)), "none": None}
    for name, valid_at in cases.items():
        path = str(tmp_path / f"{name}.tif")
        ds = gdal.GetDriverByName("GTiff").Create(path, 120, 100, 2, gdal.GDT_UInt16, opts)
        ds.SetGeoTransform((500000, 2, 0, 5300000, 0, -2))
        data = np.zeros((2, 100, 120), np.uint16)
        if valid_at is not None:
            data[:, valid_at[0], valid_at[1]] = 5
        for b in range(2):
            ds.GetRasterBand(b + 1).SetNoDataValue(0)
            ds.GetRasterBand(b + 1).WriteArray(data[b])
        ds = None
        src = open_raster(path)
        reads.clear()
        assert any_valid_pixel(src, raster_info(src, path)) is (valid_at is not None), name
        if name == "centre":
            assert [(w.width, w.height) for w in reads] == [(32, 32)]
