"""Tiled prediction: the seam-free proof against whole-image inference, outputs, bad inputs."""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
from osgeo import gdal

from geoseg.core import stream
from geoseg.core.backends import open_backend
from geoseg.core.card import CARD_KEY, ModelCard
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.grid import keep_spans, make_tiling
from geoseg.core.predict import SegmentParams, read_model_card, segment, tile_memory_bytes
from geoseg.core.raster import category_names
from geoseg.core.train import TrainParams, train
from geoseg.models.export import export_onnx
from tests.support.helpers import make_raster, standard_labels, tree_snapshot

W, H = 203, 157  # non-square, not a multiple of any stride used
HOLE = (60, 40, 17, 13)
VALUES = [0, 3, 7]  # class values need not be contiguous


def conv_stack(in_channels: int = 3, classes: int = 3, layers: int = 3) -> torch.nn.Module:
    """A model whose receptive field is exactly `layers` pixels (3×3 convolutions)."""
    torch.manual_seed(0)
    mods: list[torch.nn.Module] = []
    c = in_channels
    for _ in range(layers - 1):
        mods += [torch.nn.Conv2d(c, 8, 3, padding=1), torch.nn.Tanh()]
        c = 8
    mods.append(torch.nn.Conv2d(c, classes, 3, padding=1))
    return torch.nn.Sequential(*mods).eval()


def card(radius: int = 3, chip: int = 32) -> dict:
    return {
        "classes": [{"value": v, "name": f"c{v}", "color": f"#0{v}0{v}0{v}"} for v in VALUES],
        "bands": [1, 2, 3],
        "in_channels": 3,
        "chip_size": chip,
        "normalization": {"mean": [20000.0, 30000.0, 25000.0], "std": [15000.0, 17000.0, 16000.0]},
        "recommended": {"crop": radius, "stride": chip - 2 * radius, "receptive_field_radius": radius},
        "architecture": "custom",
        "pixel_size": [2.0, 2.0],
    }


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    raster = str(root / "scene.tif")
    pixels = make_raster(raster, W, H, bands=3, hole=HOLE)
    model = str(root / "conv.onnx")
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    return raster, model, pixels


def whole_image(model: str, pixels: np.ndarray, c: dict) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the model run once on the whole normalised raster."""
    norm = ModelCard.from_dict(c).normalization
    mean = np.array(norm.mean, np.float32)[:, None, None]
    std = np.array(norm.std, np.float32)[:, None, None]
    valid = (pixels != 0).all(axis=0)
    x = (pixels.astype(np.float32) - mean) / std
    x[:, ~valid] = 0
    logits = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x[None]})[0][0]
    e = np.exp(logits - logits.max(axis=0))
    probs = e / e.sum(axis=0)
    classes = np.array(VALUES, np.uint8)[logits.argmax(axis=0)]
    classes[~valid] = 255
    probs[:, ~valid] = -1
    return classes, probs


@pytest.mark.parametrize("rule", [stream.ClassRule(), stream.ClassRule(True, False, 0.0)])
def test_batch_arg_max_is_numpys_and_finds_the_pixels_without_a_usable_score(rule):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (3, 6, 9, 11)).astype(np.float32)  # many ties: the first maximum wins
    idx, unusable = stream._batch_channels(rule, scores)
    np.testing.assert_array_equal(idx, scores.argmax(axis=1))
    assert not unusable.any()
    scores[0, 2, 0, 0] = np.nan  # NaN in one class
    scores[0, 5, 0, 1] = np.inf  # +inf in one class
    scores[0, :, 0, 2] = -np.inf  # −inf in every class
    scores[0, 3, 0, 3] = -np.inf  # −inf beside finite scores: that class only has probability 0
    idx, unusable = stream._batch_channels(rule, scores)
    assert unusable[0, 0, :4].tolist() == [True, True, True, False] and unusable.sum() == 3
    assert idx[0, 0, 3] == scores[0, :, 0, 3].argmax() != 3
    np.testing.assert_array_equal(idx[1:], scores[1:].argmax(axis=1))


@pytest.mark.parametrize("chip, stride_x, stride_y, crop", [(32, 24, 20, 3), (32, 26, 26, 3), (48, 13, 40, 4)])
def test_tiled_map_equals_whole_image_inference(scene, tmp_path, chip, stride_x, stride_y, crop):
    raster, model, pixels = scene
    out, probs = str(tmp_path / "classes.tif"), str(tmp_path / "probs.tif")
    r = segment(
        SegmentParams(
            raster, model, out, probs, chip_size=chip, stride_x=stride_x, stride_y=stride_y, crop=crop, batch_size=3
        )
    )
    ref_classes, ref_probs = whole_image(model, pixels, card())
    got = gdal.Open(out).ReadAsArray()
    np.testing.assert_array_equal(got, ref_classes)  # every pixel, edges and corners included
    got_probs = gdal.Open(probs).ReadAsArray()
    assert np.abs(got_probs - ref_probs).max() <= 1e-4
    assert r.tiles == len(make_tiling(W, H, chip, stride_x, stride_y, crop).xs) * len(
        make_tiling(W, H, chip, stride_x, stride_y, crop).ys
    )


def test_crop_below_receptive_field_shows_seams(scene, tmp_path):
    """The proof has teeth: with no crop, interior tile edges differ from whole-image inference."""
    raster, model, pixels = scene
    out = str(tmp_path / "c.tif")
    segment(SegmentParams(raster, model, out, None, chip_size=32, stride_x=32, stride_y=32, crop=0))
    ref, _ = whole_image(model, pixels, card())
    assert (gdal.Open(out).ReadAsArray() != ref).any()


def test_output_grid_nodata_and_legend(scene, tmp_path):
    raster, model, _ = scene
    out = str(tmp_path / "c.tif")
    segment(SegmentParams(raster, model, out, str(tmp_path / "p.tif")))
    src, ds = gdal.Open(raster), gdal.Open(out)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (W, H, 1)
    assert ds.GetGeoTransform() == src.GetGeoTransform() and ds.GetProjection() == src.GetProjection()
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    x, y, w, h = HOLE
    assert (band.ReadAsArray()[y : y + h, x : x + w] == 255).all()
    table = band.GetColorTable()
    assert table.GetColorEntry(3) == (3, 3, 3, 255) and table.GetColorEntry(7) == (7, 7, 7, 255)
    assert band.GetOverviewCount() == 0  # too small for overviews
    assert category_names(out)[7] == "c7"  # from c.tif.aux.xml, read even where PAM is off (as in these tests)
    assert "COMPRESSION=DEFLATE" in gdal.Info(ds) and band.GetBlockSize() == [256, 256]
    probs = gdal.Open(str(tmp_path / "p.tif"))
    assert probs.RasterCount == 3 and probs.GetRasterBand(3).GetDescription() == "c7"
    assert probs.GetRasterBand(1).DataType == gdal.GDT_Float32
    total = probs.ReadAsArray().sum(axis=0)
    valid = band.ReadAsArray() != 255
    np.testing.assert_allclose(total[valid], 1.0, atol=1e-5)
    assert not [f for f in os.listdir(tmp_path) if "partial" in f]


def test_raster_smaller_than_chip(tmp_path):
    raster = str(tmp_path / "small.tif")
    pixels = make_raster(raster, 20, 25, bands=3)
    model = str(tmp_path / "m.onnx")
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    out = str(tmp_path / "c.tif")
    segment(SegmentParams(raster, model, out))
    got = gdal.Open(out).ReadAsArray()
    assert got.shape == (25, 20)
    ref, _ = whole_image(model, np.pad(pixels, ((0, 0), (0, 7), (0, 12)), constant_values=0), card())
    # padding is nodata for the model: whole-image inference on the same padded tile agrees
    np.testing.assert_array_equal(got, ref[:25, :20])


def test_keep_spans_cover_each_pixel_once():
    for length, chip, stride, crop in [(203, 32, 24, 4), (100, 32, 32, 0), (64, 32, 20, 6), (20, 32, 16, 8)]:
        origins, spans = keep_spans(length, chip, stride, crop)
        cover = np.zeros(length, int)
        for o, (a, b) in zip(origins, spans, strict=True):
            cover[a:b] += 1
            assert a >= (o + crop if o > 0 else 0) and b <= (o + chip - crop if o + chip < length else length)
        assert (cover == 1).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny UNet trained by GeoSeg: a .pt and its .onnx."""
    root = tmp_path_factory.mktemp("trained")
    raster = str(root / "r.tif")
    make_raster(raster, 96, 64, bands=3)
    chips = str(root / "chips")
    export_chips(ExportParams(raster, standard_labels(str(root / "l.gpkg")), chips, class_field="cls", chip_size=32))
    r = train(
        TrainParams(
            chips, str(root / "m.pt"), epochs=1, batch_size=4, device="cpu", model_options={"base_width": 4, "depth": 2}
        )
    )
    return raster, r.model_path, r.onnx_path


def test_torch_and_onnxruntime_backends_agree(trained, tmp_path):
    raster, pt, onnx_path = trained
    a, b = str(tmp_path / "a.tif"), str(tmp_path / "b.tif")
    ra = segment(SegmentParams(raster, pt, a, chip_size=32, stride_x=16, stride_y=16, crop=8))
    rb = segment(SegmentParams(raster, onnx_path, b, chip_size=32, stride_x=16, stride_y=16, crop=8))
    assert (ra.backend, rb.backend) == ("torch", "onnxruntime")
    assert rb.provider == "CPUExecutionProvider" and "cpu" in ra.provider
    assert (gdal.Open(a).ReadAsArray() == gdal.Open(b).ReadAsArray()).mean() > 0.999


def test_cancel_leaves_nothing(scene, tmp_path):
    raster, model, _ = scene
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        segment(
            SegmentParams(raster, model, str(tmp_path / "c.tif"), str(tmp_path / "p.tif"), batch_size=1),
            cancelled=cancelled,
        )
    assert os.listdir(tmp_path) == []


def test_bad_inputs(scene, trained, tmp_path):
    raster, model, _ = scene
    data = os.path.dirname(raster)
    before = tree_snapshot(data)
    one_band = str(tmp_path / "one.tif")
    make_raster(one_band, 50, 40, bands=1)
    twelve = str(tmp_path / "twelve.tif")
    make_raster(twelve, 50, 40, bands=12)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(2000))
    bare = str(tmp_path / "bare.onnx")
    export_onnx(conv_stack(), 3, bare)
    wrong = str(tmp_path / "wrong.onnx")
    export_onnx(conv_stack(classes=5), 3, wrong, metadata={CARD_KEY: json.dumps(card())})
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"mine")
    o = str(tmp_path / "o.tif")
    # a local model's default chip here is 128 (the raster's shorter side, core.tiling), not the card's 32
    cases = [
        (SegmentParams(one_band, model, str(tmp_path / "o.tif")), "INPUT has 1 band, but the model was trained on 3"),
        (SegmentParams(twelve, model, str(tmp_path / "o.tif")), "INPUT has 12 bands"),
        (SegmentParams(raster, str(corrupt), str(tmp_path / "o.tif")), "is not a valid ONNX model"),
        (SegmentParams(raster, bare, str(tmp_path / "o.tif")), "carries no GeoSeg model card"),
        (SegmentParams(raster, wrong, str(tmp_path / "o.tif")), r"returns shape \[1, 5, 128, 128\].*lists 3 classes"),
        (SegmentParams(raster, model, o, chip_size=32, stride_x=30, crop=4), r"STRIDE_X \(30\) must be"),
        (SegmentParams(raster, model, o, chip_size=32, crop=16), "CROP must be"),
        (SegmentParams(raster, model, "/sys/geoseg/o.tif"), "OUTPUT: cannot"),
        (SegmentParams(raster, model, str(existing)), "already exists"),
        (SegmentParams(raster, model, str(tmp_path / "o.png")), "must be a GeoTIFF"),
        (SegmentParams(raster, trained[2], str(tmp_path / "o.tif"), backend="torch"), "BACKEND torch needs"),
        (SegmentParams(raster, model, str(tmp_path / "o.tif"), device="cuda"), "CUDA was requested"),
    ]
    for params, message in cases:
        if params.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            continue  # asking for CUDA is no error where it exists
        with pytest.raises(GeoSegError, match=message):
            segment(params)
        assert not os.path.exists(tmp_path / "o.tif") and not os.path.exists("/sys/geoseg")
    assert existing.read_bytes() == b"mine" and tree_snapshot(data) == before
    assert not [f for f in os.listdir(tmp_path) if "partial" in f]


def test_overviews_are_written_while_streaming(tmp_path):
    raster = str(tmp_path / "big.tif")
    make_raster(raster, 1100, 530, bands=3, hole=(500, 200, 40, 30))
    model = str(tmp_path / "m.onnx")
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    out = str(tmp_path / "c.tif")
    segment(SegmentParams(raster, model, out, str(tmp_path / "p.tif"), chip_size=64, crop=4, stride_x=56, stride_y=56))
    ds = gdal.Open(out)
    band = ds.GetRasterBand(1)
    full = band.ReadAsArray()
    assert band.GetOverviewCount() == 2  # 2× and 4× (the 8× level would be under 256 px)
    for i, f in enumerate((2, 4)):
        ov = band.GetOverview(i).ReadAsArray()
        rows = np.minimum(np.arange(ov.shape[0]) * f + f // 2, 529)
        cols = np.minimum(np.arange(ov.shape[1]) * f + f // 2, 1099)
        assert ov.shape == (-(-530 // f), -(-1100 // f))
        np.testing.assert_array_equal(ov, full[np.ix_(rows, cols)])
    probs = gdal.Open(str(tmp_path / "p.tif"))
    assert probs.GetRasterBand(2).GetOverviewCount() == 2
    np.testing.assert_array_equal(
        probs.GetRasterBand(2).GetOverview(0).ReadAsArray(),
        probs.GetRasterBand(2).ReadAsArray()[1::2, 1::2][:265, :550],
    )


# ---------------------------------------------------------------- pipeline (reader, model, writer threads)


def geoseg_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("geoseg-")]


def run_segment(raster: str, model: str, folder, name: str, **kw) -> tuple[np.ndarray, np.ndarray, object]:
    out, probs = str(folder / f"{name}.tif"), str(folder / f"{name}.p.tif")
    params = dict(chip_size=32, stride_x=24, stride_y=20, crop=3) | kw
    r = segment(SegmentParams(raster, model, out, probs, **params))
    return gdal.Open(out).ReadAsArray(), gdal.Open(probs).ReadAsArray(), r


def test_pipeline_output_does_not_depend_on_batch_size(scene, tmp_path):
    """Batches of 1, of 5 (never dividing a strip's 9 tiles) and the automatic size give the same
    bytes: the threaded stages put every tile where the sequential loop did."""
    raster, model, pixels = scene
    ref_classes, ref_probs = whole_image(model, pixels, card())
    first = None
    for batch in (1, 5, 0):
        classes, probs, r = run_segment(raster, model, tmp_path, f"b{batch}", batch_size=batch)
        np.testing.assert_array_equal(classes, ref_classes)
        if first is None:
            first = probs
        np.testing.assert_array_equal(probs, first)  # bit for bit
        assert r.batch_size == (batch or r.batch_size) and r.batch_size >= 1
    assert np.abs(first - ref_probs).max() <= 1e-4
    assert geoseg_threads() == []


def per_tile_bytes(model: str, chip: int = 32) -> float:
    c = read_model_card(model)
    return tile_memory_bytes(open_backend(model, c, "auto", "cpu", chip), c, chip)


def test_out_of_memory_halves_the_batch_and_retries_the_same_tiles(scene, tmp_path, caplog, monkeypatch):
    raster, model, _ = scene
    ref, ref_probs, _ = run_segment(raster, model, tmp_path, "ref", batch_size=8)
    budget_mb = 2.5 * per_tile_bytes(model) / 1e6  # 2 tiles fit, 4 and 8 do not
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        classes, probs, r = run_segment(raster, model, tmp_path, "oom", batch_size=8, memory_budget_mb=budget_mb)
    np.testing.assert_array_equal(classes, ref)
    np.testing.assert_array_equal(probs, ref_probs)
    assert (r.batch_size, r.final_batch_size) == (8, 2)
    halvings = [m for m in caplog.messages if m.startswith("Out of memory in segmentation")]
    assert halvings == [
        "Out of memory in segmentation at batch size 8; retrying with batch size 4.",
        "Out of memory in segmentation at batch size 4; retrying with batch size 2.",
    ]
    # the same through the environment variable, as a user would set it
    monkeypatch.setenv("GEOSEG_MEMORY_BUDGET_MB", str(1.5 * per_tile_bytes(model) / 1e6))
    classes, _, r = run_segment(raster, model, tmp_path, "env", batch_size=4)
    np.testing.assert_array_equal(classes, ref)
    assert r.final_batch_size == 1


def test_out_of_memory_at_batch_one_is_a_clear_error_without_output(scene, tmp_path):
    raster, model, _ = scene
    budget_mb = 0.5 * per_tile_bytes(model) / 1e6
    with pytest.raises(GeoSegError, match="Out of memory in segmentation even with batch size 1"):
        run_segment(raster, model, tmp_path, "none", batch_size=2, memory_budget_mb=budget_mb)
    assert os.listdir(tmp_path) == [] and geoseg_threads() == []


def test_automatic_batch_size_respects_the_budget(scene, tmp_path):
    raster, model, _ = scene
    tile = per_tile_bytes(model)
    assert tile > 32 * 32 * 4 * (3 + 3)  # more than the input and the logits: activations are counted
    _, _, r = run_segment(raster, model, tmp_path, "three", batch_size=0, memory_budget_mb=3.9 * tile / 1e6)
    assert (r.batch_size, r.final_batch_size) == (3, 3)
    _, _, r = run_segment(raster, model, tmp_path, "free", batch_size=0)
    assert 1 <= r.batch_size <= 8  # no budget: a share of the free RAM, capped where batches stop paying off


def corrupt_copy(raster: str, path: str, block: tuple[int, int]) -> None:
    """A tiled DEFLATE copy of `raster` whose block (col, row) holds garbage: GDAL fails to decode it."""
    gdal.Translate(path, raster, creationOptions=["TILED=YES", "BLOCKXSIZE=32", "BLOCKYSIZE=32", "COMPRESS=DEFLATE"])
    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    offset = int(band.GetMetadataItem(f"BLOCK_OFFSET_{block[0]}_{block[1]}", "TIFF"))
    size = int(band.GetMetadataItem(f"BLOCK_SIZE_{block[0]}_{block[1]}", "TIFF"))
    band = ds = None
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)


def test_read_error_in_the_reader_thread_is_reported_and_leaves_no_output(scene, tmp_path):
    raster, model, _ = scene
    data = tmp_path / "data"
    data.mkdir()
    broken = str(data / "broken.tif")
    corrupt_copy(raster, broken, (3, 3))  # rows 96-127: the reader fails after earlier strips were written
    with pytest.raises(GeoSegError, match=r"INPUT: reading .*broken\.tif failed at pixels \d+, \d+ \(.*broken"):
        segment(
            SegmentParams(
                broken,
                model,
                str(tmp_path / "c.tif"),
                str(tmp_path / "p.tif"),
                chip_size=32,
                stride_x=24,
                stride_y=20,
                crop=3,
                batch_size=2,
            )
        )
    assert sorted(os.listdir(tmp_path)) == ["data"] and geoseg_threads() == []


def test_write_error_in_the_writer_thread_is_reported_and_leaves_no_output(scene, tmp_path, monkeypatch):
    raster, model, _ = scene
    writes = []

    def failing_write(self, data):
        writes.append(data.shape)
        if len(writes) == 3:
            raise RuntimeError("TIFFAppendToStrip: Write error at scanline 40 (disk full)")
        return original(self, data)

    original = stream.PyramidWriter.write
    monkeypatch.setattr(stream.PyramidWriter, "write", failing_write)
    with pytest.raises(GeoSegError, match=r"OUTPUT: writing the result failed \(TIFFAppendToStrip: Write error"):
        segment(
            SegmentParams(
                raster,
                model,
                str(tmp_path / "c.tif"),
                None,
                chip_size=32,
                stride_x=24,
                stride_y=20,
                crop=3,
                batch_size=2,
            )
        )
    assert len(writes) == 3 and os.listdir(tmp_path) == [] and geoseg_threads() == []


@pytest.mark.parametrize("lanes", [False, True])
def test_cancel_mid_run_stops_every_stage_and_leaves_nothing(scene, tmp_path, monkeypatch, lanes):
    raster, model, _ = scene
    if lanes:  # the model in lanes (tests/core/test_core_lanes.py), however small the run and the machine
        from geoseg.core import backends, predict

        monkeypatch.setattr(predict, "LANES_MIN_PIXELS", 0)
        monkeypatch.setattr(backends.os, "cpu_count", lambda: 4)
    seen: list[float] = []

    def cancelled() -> bool:
        return bool(seen) and seen[-1] > 0.5  # after half the tiles: strips were written already

    with pytest.raises(Cancelled):
        segment(
            SegmentParams(
                raster,
                model,
                str(tmp_path / "c.tif"),
                str(tmp_path / "p.tif"),
                chip_size=32,
                stride_x=24,
                stride_y=20,
                crop=3,
                batch_size=2,
            ),
            progress=seen.append,
            cancelled=cancelled,
        )
    assert 0.5 < max(seen) < 0.97 and os.listdir(tmp_path) == [] and geoseg_threads() == []
