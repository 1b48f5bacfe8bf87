"""Issue 17 (second half): SIEVE, OUTPUT_VECTOR and TTA of segment."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr

from geoseg.core.card import CARD_KEY
from geoseg.core.errors import GeoSegError
from geoseg.core.predict import SegmentParams, segment
from geoseg.core.raster import category_names
from geoseg.core.tta import VIEWS, apply_view, undo_view, with_views
from geoseg.models.export import export_onnx
from tests.core.test_core_predict import HOLE, VALUES, card, conv_stack
from tests.support.helpers import make_raster, tree_snapshot
from tests.support.regions import rasterize, regions

W, H = 203, 157
TILING = dict(chip_size=32, stride_x=24, stride_y=20, crop=3, batch_size=5)


def symmetric_stack() -> torch.nn.Module:
    """conv_stack with every kernel averaged over the 8 symmetries of the square: the network
    commutes with flips and quarter turns (zero padding is symmetric too)."""
    model = conv_stack()
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Conv2d):
                w = m.weight
                views = [torch.rot90(w.flip(-1) if f else w, k, (-2, -1)) for k in range(4) for f in (False, True)]
                m.weight.copy_(torch.stack(views).mean(0))
    return model


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    raster = str(root / "scene.tif")
    make_raster(raster, W, H, bands=3, hole=HOLE)
    generic, symmetric = str(root / "generic.onnx"), str(root / "symmetric.onnx")
    export_onnx(conv_stack(), 3, generic, metadata={CARD_KEY: json.dumps(card())})
    export_onnx(symmetric_stack(), 3, symmetric, metadata={CARD_KEY: json.dumps(card())})
    return raster, generic, symmetric


def run(raster: str, model: str, folder, name: str, **kw):
    out, probs = str(folder / f"{name}.tif"), str(folder / f"{name}.p.tif")
    r = segment(SegmentParams(raster, model, out, probs, **(TILING | kw)))
    return gdal.Open(out).ReadAsArray(), gdal.Open(probs).ReadAsArray(), r


# ------------------------------------------------------------------------------------------- TTA
def test_views_are_undone():
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    for level, views in VIEWS.items():
        assert len(views) == {"none": 1, "flips": 4, "all": 8}[level]
        seen = {apply_view(x, k, f).tobytes() for k, f in views}
        assert len(seen) == len(views)  # distinct views
        for k, f in views:
            np.testing.assert_array_equal(undo_view(apply_view(x, k, f), k, f), x)


def test_views_run_as_one_batch_of_tiles_times_views():
    x = np.random.default_rng(0).normal(size=(3, 2, 8, 8)).astype(np.float32)
    shapes = []

    def model(v: np.ndarray) -> np.ndarray:
        shapes.append(v.shape)
        return v * 2.0  # pointwise: equivariant

    def probs(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    got = with_views(x, "all", model, probs)
    assert shapes == [(24, 2, 8, 8)]
    np.testing.assert_allclose(got, probs(2.0 * x), atol=1e-6)
    ramp = np.zeros((2, 1, 8), np.float32)
    ramp[0, 0] = np.linspace(0, 3, 8)  # a position-dependent model (class 0 favoured on the right): views differ
    assert np.abs(with_views(x, "all", lambda v: v + ramp, probs) - probs(x + ramp)).max() > 0.05


def test_tta_with_an_equivariant_model_equals_no_tta(scene, tmp_path):
    raster, _, symmetric = scene
    c0, p0, _ = run(raster, symmetric, tmp_path, "none")
    for level in ("flips", "all"):
        c, p, r = run(raster, symmetric, tmp_path, level, tta=level)
        np.testing.assert_array_equal(c, c0)
        assert np.abs(p - p0).max() <= 1e-5
        assert r.final_batch_size == 5  # model inputs per run; 5 // views → 1 tile of views per batch


def test_tta_with_a_generic_model_differs(scene, tmp_path):
    raster, generic, _ = scene
    c0, p0, _ = run(raster, generic, tmp_path, "none")
    c2, p2, _ = run(raster, generic, tmp_path, "all", tta="all", batch_size=16)
    valid = c0 != 255
    assert np.abs(p2 - p0).max() > 0.05
    assert (c2 != c0).sum() > 0
    np.testing.assert_array_equal(c2 == 255, c0 == 255)  # nodata stays nodata
    np.testing.assert_allclose(p2[:, valid].sum(axis=0), 1.0, atol=1e-4)


# ------------------------------------------------------------------------------------------- SIEVE
def test_sieve_removes_every_region_below_the_size(scene, tmp_path):
    raster, generic, _ = scene
    c0, _, _ = run(raster, generic, tmp_path, "plain")
    assert min(n for _, n in regions(c0)) < 10  # the noisy scene has small regions to remove
    c, _, r = run(raster, generic, tmp_path, "sieved", sieve=10)
    sizes = regions(c)
    assert min(n for _, n in sizes) >= 10
    assert len(sizes) < len(regions(c0))
    np.testing.assert_array_equal(c == 255, c0 == 255)  # nodata neither grows nor shrinks
    ds = gdal.Open(r.output_path)
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == 255
    assert band.GetRasterColorTable() is not None
    assert category_names(r.output_path) == {v: f"c{v}" for v in VALUES}
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_sieve_rebuilds_the_overviews(scene, tmp_path):
    big = str(tmp_path / "input.tif")
    make_raster(big, 600, 520, bands=3, seed=3)
    _, generic, _ = scene
    c, _, r = run(big, generic, tmp_path, "big", sieve=25)
    ds = gdal.Open(r.output_path)
    band = ds.GetRasterBand(1)
    assert band.GetOverviewCount() == 1
    ov = band.GetOverview(0).ReadAsArray()
    plain, _, _ = run(big, generic, tmp_path, "plain")
    sub = (slice(1, None, 2), slice(1, None, 2))
    agree = (ov == c[sub][: ov.shape[0], : ov.shape[1]]).mean()
    assert agree > 0.995  # nearest neighbour from the sieved map (GDAL's sampling may pick a neighbour)
    assert agree > (ov == plain[sub][: ov.shape[0], : ov.shape[1]]).mean()  # not the overview of the unsieved map


# ------------------------------------------------------------------------------------------- polygons
def test_polygons_rasterised_back_equal_the_class_map(scene, tmp_path):
    raster, generic, _ = scene
    vector = str(tmp_path / "regions.gpkg")
    c, _, r = run(raster, generic, tmp_path, "vec", sieve=6, vector_path=vector)
    assert r.vector_path == os.path.abspath(vector)
    np.testing.assert_array_equal(rasterize(vector, r.output_path), c)
    ds = ogr.Open(vector)
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["regions"]
    layer = ds.GetLayer("regions")
    sizes = regions(c)
    assert layer.GetFeatureCount() == len(sizes)  # one feature per 4-connected region, none for nodata
    areas = sorted((f["value"], round(f["area"])) for f in layer)
    assert areas == sorted((v, n * 4) for v, n in sizes)  # 2 m pixels: m²
    for f in layer:
        assert f.GetGeometryRef().IsValid()
        assert f["name"] == f"c{f['value']}"
    assert min(a for _, a in areas) >= 6 * 4


def test_bad_outputs_are_refused_before_any_work(scene, tmp_path):
    raster, generic, _ = scene
    existing = tmp_path / "old.gpkg"
    existing.write_bytes(b"mine")
    before = tree_snapshot(str(tmp_path))
    cases = [
        ({"vector_path": str(tmp_path / "r.shp")}, "OUTPUT_VECTOR must be a GeoPackage"),
        ({"vector_path": str(existing)}, "OUTPUT_VECTOR"),
        ({"sieve": -1}, "SIEVE must be at least 0"),
        ({"tta": "spin"}, "TTA must be one of"),
    ]
    for kw, text in cases:
        with pytest.raises(GeoSegError, match=text) as e:
            segment(SegmentParams(raster, generic, str(tmp_path / "o.tif"), **(TILING | kw)))
        assert e.value.param == next(
            iter({"vector_path": "OUTPUT_VECTOR", "sieve": "SIEVE", "tta": "TTA"}[k] for k in kw)
        )
    assert tree_snapshot(str(tmp_path)) == before
    assert existing.read_bytes() == b"mine"
