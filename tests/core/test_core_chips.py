"""Chip export against independent references: GDAL's whole-raster rasterization, the
source pixels, numpy statistics. Pure engine, no QGIS in the process."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from osgeo import gdal, ogr

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.grid import make_grid
from tests.support.helpers import make_raster, make_vector, rasterize_whole, standard_labels, tree_snapshot, utm_box

W, H = 301, 187  # not square, not a multiple of any stride used here
HOLE = (150, 20, 25, 30)


@pytest.fixture
def scene(tmp_path):
    raster = str(tmp_path / "scene.tif")
    pixels = make_raster(raster, W, H, bands=4, hole=HOLE)
    labels = standard_labels(str(tmp_path / "labels.gpkg"))  # EPSG:4326, raster in UTM 33N
    return raster, labels, pixels


def read_csv(folder: str) -> list[dict]:
    with open(os.path.join(folder, "chips.csv"), newline="") as f:
        return list(csv.DictReader(f))


def run(raster, labels, out, **kw):
    kw.setdefault("class_field", "cls")
    kw.setdefault("chip_size", 64)
    return export_chips(ExportParams(raster, labels, str(out), **kw))


def test_chips_equal_source_windows_and_whole_raster_rasterization(scene, tmp_path):
    raster, labels, pixels = scene
    out = tmp_path / "chips"
    res = run(raster, labels, out, stride_x=48, stride_y=40)
    grid = make_grid(W, H, 64, 48, 40)
    assert res.n_grid == len(grid) == res.n_chips  # no chip is entirely nodata here
    rows = read_csv(str(out))
    assert len(rows) == len(grid)
    assert {(int(r["xoff"]), int(r["yoff"])) for r in rows} == {(w.xoff, w.yoff) for w in grid}
    assert max(int(r["xoff"]) for r in rows) == W - 64 and max(int(r["yoff"]) for r in rows) == H - 64

    reference = rasterize_whole(raster, labels)
    valid = (pixels != 0).all(axis=0)
    reference[~valid] = 255
    assert (reference == 1).any() and (reference == 2).any() and (reference == 3).any()
    src_gt = gdal.Open(raster).GetGeoTransform()
    for r in rows:
        x, y = int(r["xoff"]), int(r["yoff"])
        img = gdal.Open(str(out / r["image"]))
        msk = gdal.Open(str(out / r["mask"]))
        np.testing.assert_array_equal(img.ReadAsArray(), pixels[:, y : y + 64, x : x + 64])
        np.testing.assert_array_equal(msk.ReadAsArray(), reference[y : y + 64, x : x + 64])
        gt = img.GetGeoTransform()
        assert gt == pytest.approx((src_gt[0] + x * 2.0, 2.0, 0, src_gt[3] - y * 2.0, 0, -2.0))
        assert msk.GetGeoTransform() == gt
        assert "32633" in img.GetProjection() or "UTM zone 33N" in img.GetProjection()
        assert msk.GetRasterBand(1).GetNoDataValue() == 255
        assert img.GetRasterBand(1).DataType == gdal.GDT_UInt16 and img.RasterCount == 4
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]


def test_dataset_json_statistics_match_numpy(scene, tmp_path):
    raster, labels, pixels = scene
    out = tmp_path / "chips"
    res = run(raster, labels, out, validation_fraction=0.25, seed=3)
    ds = json.load(open(out / "dataset.json"))
    rows = read_csv(str(out))
    train = [r for r in rows if r["split"] == "train"]
    stack = []
    counts = {}
    for r in train:
        x, y = int(r["xoff"]), int(r["yoff"])
        win = pixels[:, y : y + 64, x : x + 64].reshape(4, -1).astype(np.float64)
        stack.append(win[:, (win != 0).all(axis=0)])
        m = gdal.Open(str(out / r["mask"])).ReadAsArray()
        for v in (0, 1, 2, 3):
            counts[str(v)] = counts.get(str(v), 0) + int((m == v).sum())
    allpx = np.concatenate(stack, axis=1)
    np.testing.assert_allclose(ds["normalization"]["mean"], allpx.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(ds["normalization"]["std"], allpx.std(axis=1), rtol=1e-9)
    assert ds["class_pixel_counts_by_split"]["train"] == counts
    assert [c["value"] for c in ds["classes"]] == [0, 1, 2, 3]
    assert ds["classes"][0]["name"] == "background"
    assert ds["in_channels"] == 4 and ds["bands"] == [1, 2, 3, 4] and ds["chip_size"] == 64
    assert ds["crs"]["authid"] == "EPSG:32633" and ds["pixel_size"] == [2.0, 2.0]
    assert ds["split"]["validation"] == res.n_validation == round(0.25 * res.n_chips)
    assert ds["data_type"] == "UInt16"


def test_positive_and_divided_modes(scene, tmp_path):
    raster, labels, _ = scene
    every = run(raster, labels, tmp_path / "all", mode="all")
    pos = run(raster, labels, tmp_path / "pos", mode="positive")
    div = run(raster, labels, tmp_path / "div", mode="divided")
    pos_rows = read_csv(str(tmp_path / "pos"))
    assert 0 < pos.n_chips < every.n_chips
    assert pos.n_skipped_negative == every.n_chips - pos.n_chips
    for r in pos_rows:
        m = gdal.Open(str(tmp_path / "pos" / r["mask"])).ReadAsArray()
        assert ((m != 0) & (m != 255)).any()
    div_rows = read_csv(str(tmp_path / "div"))
    assert div.n_chips == every.n_chips
    positive = [r for r in div_rows if r["image"].startswith("images/positive/")]
    background = [r for r in div_rows if r["image"].startswith("images/background/")]
    assert len(positive) == pos.n_chips and len(background) == every.n_chips - pos.n_chips
    for r in div_rows:
        assert r["mask"] == r["image"].replace("images/", "masks/", 1)
        assert os.path.exists(tmp_path / "div" / r["mask"])


def test_max_nodata_fraction_filter_and_empty_chips(tmp_path):
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 128, 64, bands=2, hole=(0, 0, 64, 64))  # left chip all nodata
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 128, 64), 1)])
    res = run(raster, labels, tmp_path / "a")
    assert (res.n_grid, res.n_chips, res.n_skipped_empty) == (2, 1, 1)
    make_raster(raster := str(tmp_path / "r2.tif"), 128, 64, bands=2, hole=(0, 0, 40, 64))
    res = run(raster, labels, tmp_path / "b", max_nodata_fraction=0.5)
    assert (res.n_chips, res.n_skipped_nodata) == (1, 1)
    res = run(raster, labels, tmp_path / "c", max_nodata_fraction=0.7)
    assert res.n_chips == 2


def test_raster_smaller_than_chip_is_padded(tmp_path):
    raster = str(tmp_path / "small.tif")
    pixels = make_raster(raster, 40, 25, bands=3)
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(5, 5, 20, 20), 2)])
    out = tmp_path / "chips"
    res = run(raster, labels, out)
    assert res.n_chips == 1
    ds = json.load(open(out / "dataset.json"))
    assert ds["padding"] == {"x": 24, "y": 39}
    r = read_csv(str(out))[0]
    img = gdal.Open(str(out / r["image"])).ReadAsArray()
    msk = gdal.Open(str(out / r["mask"])).ReadAsArray()
    assert img.shape == (3, 64, 64) and msk.shape == (64, 64)
    np.testing.assert_array_equal(img[:, :25, :40], pixels)
    assert (img[:, 25:, :] == 0).all() and (img[:, :, 40:] == 0).all()
    assert (msk[25:, :] == 255).all() and (msk[:, 40:] == 255).all()
    assert (msk[5:20, 5:20] == 2).all()


def test_float_raster_with_nan_is_ignored_in_masks(tmp_path):
    raster = str(tmp_path / "f.tif")
    pixels = make_raster(raster, 100, 70, bands=2, dtype=gdal.GDT_Float32, nodata=None)
    ds = gdal.Open(raster, gdal.GA_Update)
    nan_block = pixels.copy()
    nan_block[1, 10:20, 10:30] = np.nan
    ds.GetRasterBand(2).WriteArray(nan_block[1])
    ds = None
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 100, 70), 1)])
    out = tmp_path / "chips"
    run(raster, labels, out, chip_size=32)
    m = gdal.Open(str(out / "masks/chip_r000000_c000000.tif")).ReadAsArray()
    assert (m[10:20, 10:30] == 255).all() and (m[:10] == 1).all()
    stats = json.load(open(out / "dataset.json"))["normalization"]
    assert np.isfinite(stats["mean"]).all() and np.isfinite(stats["std"]).all()


def test_spatial_block_split_keeps_blocks_together(scene, tmp_path):
    raster, labels, _ = scene
    out = tmp_path / "chips"
    run(raster, labels, out, chip_size=32, validation_fraction=0.3, split_method="blocks", block_size=100)
    rows = read_csv(str(out))
    by_block: dict[tuple[int, int], set[str]] = {}
    for r in rows:
        by_block.setdefault((int(r["yoff"]) // 100, int(r["xoff"]) // 100), set()).add(r["split"])
    assert all(len(s) == 1 for s in by_block.values())
    assert {"train", "validation"} == set().union(*by_block.values())


def test_split_is_seeded(scene, tmp_path):
    raster, labels, _ = scene
    a = read_csv(str(run(raster, labels, tmp_path / "a", seed=7).output_dir))
    b = read_csv(str(run(raster, labels, tmp_path / "b", seed=7).output_dir))
    c = read_csv(str(run(raster, labels, tmp_path / "c", seed=8).output_dir))
    assert [r["split"] for r in a] == [r["split"] for r in b]
    assert [r["split"] for r in a] != [r["split"] for r in c]


def test_index_geopackage(scene, tmp_path):
    raster, labels, _ = scene
    index = str(tmp_path / "index.gpkg")
    res = run(raster, labels, tmp_path / "chips", index_path=index)
    ds = ogr.Open(index)  # keep the dataset alive while its layer is used
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == res.n_chips
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"
    rows = {r["image"]: r for r in read_csv(res.output_dir)}
    for f in layer:
        r = rows[f["image"]]
        assert f["split"] == r["split"] and f["class_2"] == int(r["class_2"])
        env = f.GetGeometryRef().GetEnvelope()
        assert env[0] == pytest.approx(500000 + 2 * int(r["xoff"]))
        assert env[1] - env[0] == pytest.approx(128)


def test_cancel_leaves_nothing(scene, tmp_path):
    raster, labels, _ = scene
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        export_chips(
            ExportParams(
                raster,
                labels,
                str(tmp_path / "chips"),
                class_field="cls",
                chip_size=32,
                index_path=str(tmp_path / "i.gpkg"),
            ),
            cancelled=cancelled,
        )
    assert sorted(os.listdir(tmp_path)) == ["labels.gpkg", "scene.tif"]


def test_existing_output_is_never_overwritten(scene, tmp_path):
    raster, labels, _ = scene
    out = tmp_path / "chips"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    before = tree_snapshot(str(tmp_path))
    with pytest.raises(GeoSegError, match="not empty"):
        run(raster, labels, out)
    index = tmp_path / "index.gpkg"
    index.write_text("old")
    with pytest.raises(GeoSegError, match="already exists"):
        run(raster, labels, tmp_path / "new", index_path=str(index))
    assert tree_snapshot(str(tmp_path)) == {**before, "index.gpkg": tree_snapshot(str(tmp_path))["index.gpkg"]}
    assert (out / "mine.txt").read_text() == "keep me" and not (tmp_path / "new").exists()


def test_empty_existing_folder_is_used(scene, tmp_path):
    raster, labels, _ = scene
    (tmp_path / "chips").mkdir()
    res = run(raster, labels, tmp_path / "chips")
    assert res.n_chips > 0 and (tmp_path / "chips" / "chips.csv").exists()


@pytest.mark.parametrize("target", ["/sys/geoseg-chips", "/sys/geoseg/deeper/chips"])
def test_unwritable_output_folder(scene, target):
    raster, labels, _ = scene
    with pytest.raises(GeoSegError, match="OUTPUT_DIR: cannot"):
        run(raster, labels, target)
    assert not os.path.exists(target)


def test_output_parent_is_a_file(scene, tmp_path):
    raster, labels, _ = scene
    (tmp_path / "f").write_text("x")
    with pytest.raises(GeoSegError, match="is a file"):
        run(raster, labels, tmp_path / "f" / "chips")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"chip_size": 4}, "CHIP_SIZE must be at least 8"),
        ({"mode": "some"}, "MODE must be one of"),
        ({"background": 255}, "BACKGROUND must be 0-254"),
        ({"validation_fraction": 1.0}, "VALIDATION_FRACTION"),
        ({"max_nodata_fraction": 0}, "MAX_NODATA_FRACTION"),
        ({"stride_x": 0}, "STRIDE_X must be a positive"),
        ({"split_method": "blocks", "block_size": 10_000}, "at least 2 blocks"),
    ],
)
def test_bad_parameters(scene, tmp_path, kw, message):
    raster, labels, _ = scene
    with pytest.raises(GeoSegError, match=message):
        run(raster, labels, tmp_path / "chips", **kw)
    assert not (tmp_path / "chips").exists()


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.4])
def test_block_split_fraction_is_close(fraction):
    from geoseg.core.split import split_chips

    origins = [(x, y) for y in range(0, 2000, 50) for x in range(0, 3000, 50)]
    labels = split_chips(origins, fraction, "blocks", 0, 400)
    share = labels.count("validation") / len(labels)
    assert abs(share - fraction) < 0.06
    assert 0 < labels.count("validation") < len(labels)


def test_chips_are_listed_in_grid_order_with_threaded_writers(scene, tmp_path):
    """The worker pool finishes chips out of order; chips.csv (and so the seeded split) keeps the grid's."""
    raster, labels, _ = scene
    out = tmp_path / "chips"
    run(raster, labels, out, chip_size=32, stride_x=24, stride_y=24)
    grid = [(w.xoff, w.yoff) for w in make_grid(W, H, 32, 24, 24)]
    rows = [(int(r["xoff"]), int(r["yoff"])) for r in read_csv(str(out))]
    assert rows == grid  # the nodata hole is smaller than a chip: no chip is skipped


def test_write_error_in_a_worker_thread_leaves_nothing(scene, tmp_path, monkeypatch):
    import threading

    from geoseg.core import chips

    raster, labels, _ = scene
    calls = []

    def failing_write(path, *a, **kw):
        calls.append(path)
        if len(calls) == 7:
            raise RuntimeError("simulated GDAL write failure")
        return original(path, *a, **kw)

    original = chips.write_geotiff
    monkeypatch.setattr(chips, "write_geotiff", failing_write)
    with pytest.raises(RuntimeError, match="simulated GDAL write failure"):
        run(raster, labels, tmp_path / "chips", chip_size=32)
    assert sorted(os.listdir(tmp_path)) == ["labels.gpkg", "scene.tif"]
    assert not [t for t in threading.enumerate() if t.name.startswith("geoseg-chips")]
