"""Issue 16 through scripts/qgis_process: classified-raster labels (LABEL_RASTER), an area of interest
(MASK) and many scenes in one chips folder (APPEND), then training on a two-scene dataset."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import numpy as np
import pytest
from osgeo import gdal

from tests.support.helpers import make_raster, make_vector, python_exe, qgis_process, srs, tree_snapshot, utm_box

W, H, CHIP = 150, 110, 32
LABEL_EPSG = 3857  # another CRS than the image's (UTM 33N) ...
LABEL_PIXEL = 3.1  # ... and another pixel size (the image has 2 m)


def _label_raster(path: str, image: str, nodata: int = 9) -> np.ndarray:
    """Classes 0-3 with nodata patches, in EPSG:3857 at 3.1 m, covering only part of the image."""
    img = gdal.Open(image)
    gt = img.GetGeoTransform()
    warped = gdal.Warp("", img, format="MEM", dstSRS=srs(LABEL_EPSG).ExportToWkt(), xRes=LABEL_PIXEL, yRes=LABEL_PIXEL)
    wgt = warped.GetGeoTransform()
    w, h = int(warped.RasterXSize * 0.8), int(warped.RasterYSize * 0.85)  # the image's right and bottom: outside
    rng = np.random.default_rng(4)
    values = rng.integers(0, 4, (h // 5 + 1, w // 5 + 1)).repeat(5, 0).repeat(5, 1)[:h, :w].astype(np.uint8)
    values[10:20, 30:45] = nodata
    ds = gdal.GetDriverByName("GTiff").Create(path, w, h, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((wgt[0] + 7.3, LABEL_PIXEL, 0, wgt[3] - 5.1, 0, -LABEL_PIXEL))
    ds.SetProjection(srs(LABEL_EPSG).ExportToWkt())
    ds.GetRasterBand(1).SetNoDataValue(nodata)
    ds.GetRasterBand(1).WriteArray(values)
    ds = None
    assert gt[1] == 2.0
    return values


def _reference(image: str, labels: str) -> np.ndarray:
    """Independently: the whole label raster warped at once to the image grid (nearest), 255 outside and at
    its nodata."""
    img = gdal.Open(image)
    gt = img.GetGeoTransform()
    w, h = img.RasterXSize, img.RasterYSize
    ref = gdal.Warp(
        "",
        labels,
        format="MEM",
        outputBounds=(gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3]),
        width=w,
        height=h,
        dstSRS=img.GetProjection(),
        resampleAlg="near",
        dstNodata=255,
        errorThreshold=0,
    )
    return ref.GetRasterBand(1).ReadAsArray()


def _rows(out: str) -> list[dict]:
    with open(os.path.join(out, "chips.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _run(*args: str):
    proc = qgis_process("run", "geoseg:exportchips", "--", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def scene(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    image = str(data / "scene_a.tif")
    pixels = make_raster(image, W, H, bands=3, hole=(100, 5, 20, 15))
    labels = str(data / "classes_3857.tif")
    _label_raster(labels, image)
    return image, labels, pixels


def test_label_raster_equals_whole_warp(scene, tmp_path):
    image, labels, pixels = scene
    out = str(tmp_path / "chips")
    before = tree_snapshot(str(tmp_path / "data"))
    _run(f"INPUT={image}", f"LABEL_RASTER={labels}", f"CHIP_SIZE={CHIP}", f"OUTPUT_DIR={out}")
    ref = _reference(image, labels)
    ref[(pixels == 0).any(axis=0)] = 255  # image nodata
    assert (ref == 255).sum() > 1000 and set(np.unique(ref)) == {0, 1, 2, 3, 255}  # outside, nodata both present
    rows = _rows(out)
    assert rows
    for r in rows:
        x, y = int(r["xoff"]), int(r["yoff"])
        mask = gdal.Open(os.path.join(out, r["mask"])).ReadAsArray()
        np.testing.assert_array_equal(mask, ref[y : y + CHIP, x : x + CHIP], err_msg=r["mask"])
    dataset = json.load(open(os.path.join(out, "dataset.json"), encoding="utf-8"))
    assert [c["value"] for c in dataset["classes"]] == [0, 1, 2, 3]
    assert tree_snapshot(str(tmp_path / "data")) == before


def test_label_raster_class_names_from_categories(scene, tmp_path):
    image, labels, _ = scene
    named = str(tmp_path / "data" / "named.tif")
    gdal.Translate(named, labels)
    gdal.SetConfigOption("GDAL_PAM_ENABLED", "YES")  # the names live in named.tif.aux.xml
    try:
        ds = gdal.Open(named)
        ds.GetRasterBand(1).SetCategoryNames(["bare", "water", "forest", "urban"])
        ds = None
    finally:
        gdal.SetConfigOption("GDAL_PAM_ENABLED", None)
    assert os.path.exists(named + ".aux.xml")
    out = str(tmp_path / "chips")
    _run(f"INPUT={image}", f"LABEL_RASTER={named}", f"CHIP_SIZE={CHIP}", f"OUTPUT_DIR={out}")
    dataset = json.load(open(os.path.join(out, "dataset.json"), encoding="utf-8"))
    assert [c["name"] for c in dataset["classes"]] == ["bare", "water", "forest", "urban"]


def test_mask_drops_outside_chips_and_ignores_outside_pixels(scene, tmp_path):
    image, labels, pixels = scene
    aoi = make_vector(str(tmp_path / "data" / "aoi.gpkg"), [(utm_box(10.2, 5.4, 70.6, 50.3), 1)])  # in EPSG:4326
    out = str(tmp_path / "chips")
    _run(f"INPUT={image}", f"LABEL_RASTER={labels}", f"MASK={aoi}", f"CHIP_SIZE={CHIP}", f"OUTPUT_DIR={out}")
    inside = np.zeros((H, W), bool)
    mem = gdal.GetDriverByName("MEM").Create("", W, H, 1, gdal.GDT_Byte)
    img = gdal.Open(image)
    mem.SetGeoTransform(img.GetGeoTransform())
    mem.SetProjection(img.GetProjection())
    from osgeo import ogr

    vds = ogr.Open(aoi)  # kept: its layer dies with it
    gdal.RasterizeLayer(mem, [1], vds.GetLayer(0), burn_values=[1])
    inside = mem.ReadAsArray() == 1
    ref = _reference(image, labels)
    ref[(pixels == 0).any(axis=0)] = 255
    ref[~inside] = 255
    rows = _rows(out)
    from geoseg.core.grid import make_grid

    expected = {
        (w.xoff, w.yoff) for w in make_grid(W, H, CHIP) if inside[w.yoff : w.yoff + CHIP, w.xoff : w.xoff + CHIP].any()
    }
    assert {(int(r["xoff"]), int(r["yoff"])) for r in rows} == expected and len(expected) < len(make_grid(W, H, CHIP))
    for r in rows:
        x, y = int(r["xoff"]), int(r["yoff"])
        np.testing.assert_array_equal(
            gdal.Open(os.path.join(out, r["mask"])).ReadAsArray(), ref[y : y + CHIP, x : x + CHIP]
        )


def _moments_of_train_chips(out: str, bands: int) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for r in _rows(out):
        if r["split"] == "train":
            a = gdal.Open(os.path.join(out, r["image"])).ReadAsArray().reshape(bands, -1).astype(np.float64)
            parts.append(a[:, (a != 0).all(axis=0)])  # nodata 0
    v = np.concatenate(parts, axis=1)
    return v.mean(axis=1), v.std(axis=1)


def test_append_two_scenes_statistics_and_train(scene, tmp_path):
    image, labels, _ = scene
    data = tmp_path / "data"
    other = str(data / "scene_b.tif")  # another CRS too (UTM 32N)
    make_raster(other, 90, 70, bands=3, seed=7, epsg=32632, origin=(800000.0, 5300000.0))
    other_labels = make_vector(
        str(data / "b.gpkg"),
        [("POLYGON((800010 5299990,800100 5299990,800100 5299900,800010 5299900,800010 5299990))", 2)],
        src_epsg=32632,
    )
    out = str(tmp_path / "chips")
    _run(f"INPUT={image}", f"LABEL_RASTER={labels}", f"CHIP_SIZE={CHIP}", f"OUTPUT_DIR={out}", "SPLIT_METHOD=2")
    first = json.load(open(os.path.join(out, "dataset.json"), encoding="utf-8"))
    _run(
        f"INPUT={other}",
        f"LABELS={other_labels}",
        "CLASS_FIELD=cls",
        f"CHIP_SIZE={CHIP}",
        f"OUTPUT_DIR={out}",
        "APPEND=true",
        "SPLIT_METHOD=2",
        "VALIDATION_FRACTION=0.3",
    )
    dataset = json.load(open(os.path.join(out, "dataset.json"), encoding="utf-8"))
    rows = _rows(out)
    scenes = {r["scene"] for r in rows}
    assert scenes == {"scene_a", "scene_b"} and len(dataset["scenes"]) == 2
    assert len(rows) == first["chips"] + dataset["scenes"][1]["chips"]
    by_scene = {s: {r["split"] for r in rows if r["scene"] == s} for s in scenes}
    assert sorted(map(len, by_scene.values())) == [1, 1] and {next(iter(v)) for v in by_scene.values()} == {
        "train",
        "validation",
    }  # whole scenes held out
    mean, std = _moments_of_train_chips(out, 3)
    np.testing.assert_allclose(dataset["normalization"]["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(dataset["normalization"]["std"], std, rtol=1e-9)
    counts = {str(v): 0 for v in (0, 1, 2, 3)}
    for r in rows:
        m = gdal.Open(os.path.join(out, r["mask"])).ReadAsArray()
        for v in counts:
            counts[v] += int((m == int(v)).sum())
    assert dataset["class_pixel_counts"] == counts

    model = str(tmp_path / "m.pt")
    proc = subprocess.run(  # the command line (same TrainParams as Processing), as a user would script it
        [
            python_exe(),
            "-m",
            "geoseg.core",
            "train",
            "--chips",
            out,
            "--output-model",
            model,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--model-options",
            '{"base_width": 4, "depth": 2}',
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_train = sum(r["split"] == "train" for r in rows)
    assert os.path.exists(model)
    assert f"{n_train} training / {len(rows) - n_train} validation chips" in proc.stdout + proc.stderr  # every scene
    n_val = sum(r["split"] == "validation" for r in rows)
    with open(model.replace(".pt", ".metrics.csv"), newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f))  # one epoch trained and validated on both scenes
    assert n_val > 0


def test_interrupted_append_leaves_folder_as_it_was(scene, tmp_path, monkeypatch):
    """Core: a failure during the swap takes back every moved file."""
    from geoseg.core import append as append_mod
    from geoseg.core.chips import export_chips
    from geoseg.core.params import ExportParams

    image, labels, _ = scene
    out = str(tmp_path / "chips")
    export_chips(ExportParams(image, None, out, label_raster=labels, chip_size=CHIP))
    before = tree_snapshot(out)
    real = os.replace

    failed = []

    def fail_on_csv(src, dst):  # the last step of the swap fails once (e.g. a full disk, a kill)
        if str(dst).endswith("chips.csv") and not failed:
            failed.append(dst)
            raise OSError(5, "simulated failure")
        return real(src, dst)

    monkeypatch.setattr(append_mod.os, "replace", fail_on_csv)
    with pytest.raises(OSError):
        export_chips(ExportParams(image, None, out, label_raster=labels, chip_size=CHIP, append=True))
    monkeypatch.undo()
    assert failed and tree_snapshot(out) == before  # also no staging folder left
