"""Issue 16, chip formats for other tools: PNG image/mask pairs (8-bit, 1-4 bands) and Segmentation Zoo
.npz pairs beside the GeoTIFF chips; GeoTIFF stays the default and train reads GeoTIFF and PNG chips."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from osgeo import gdal

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import GeoSegError
from tests.support.helpers import make_raster, standard_labels, tree_snapshot

W, H, CHIP = 128, 96, 32
TINY = {"base_width": 4, "depth": 2}


@pytest.fixture
def byte_scene(tmp_path):
    raster = str(tmp_path / "rgb.tif")
    pixels = make_raster(raster, W, H, bands=3, dtype=gdal.GDT_Byte, hole=(100, 70, 10, 10))
    return raster, standard_labels(str(tmp_path / "labels.gpkg")), pixels


def _export(raster, labels, out, **kw):
    return export_chips(ExportParams(raster, labels, str(out), class_field="cls", chip_size=CHIP, **kw))


def _rows(out) -> list[dict]:
    with open(os.path.join(out, "chips.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_png_pairs_equal_geotiff_chips_and_carry_world_files(byte_scene, tmp_path):
    raster, labels, _ = byte_scene
    tif, png = tmp_path / "tif", tmp_path / "png"
    _export(raster, labels, tif)
    _export(raster, labels, png, chip_format="png")
    rows_tif, rows_png = _rows(tif), _rows(png)
    assert [r["image"] for r in rows_tif] == [r["image"].replace(".png", ".tif") for r in rows_png]
    assert all(r["image"].endswith(".png") and r["mask"].endswith(".png") for r in rows_png)
    for a, b in zip(rows_tif, rows_png, strict=True):
        for key in ("image", "mask"):
            t = gdal.Open(os.path.join(tif, a[key]))
            p = gdal.Open(os.path.join(png, b[key]))
            assert p.GetDriver().ShortName == "PNG"
            np.testing.assert_array_equal(p.ReadAsArray(), t.ReadAsArray())
            world = os.path.join(png, os.path.splitext(b[key])[0] + ".wld")
            assert os.path.isfile(world)
            assert p.GetGeoTransform() == pytest.approx(t.GetGeoTransform())  # read back from the world file
    d = json.load(open(os.path.join(png, "dataset.json"), encoding="utf-8"))
    assert d["chip_format"] == "png" and d["params"]["chip_format"] == "png"
    assert json.load(open(os.path.join(tif, "dataset.json"), encoding="utf-8"))["chip_format"] == "geotiff"


def test_npz_pairs_hold_zoo_arrays_beside_the_geotiffs(byte_scene, tmp_path):
    raster, labels, _ = byte_scene
    out = tmp_path / "zoo"
    _export(raster, labels, out, chip_format="npz")
    rows = _rows(out)
    assert rows and all(r["image"].endswith(".tif") for r in rows)  # train keeps reading the GeoTIFFs
    for r in rows:
        name = os.path.splitext(os.path.basename(r["image"]))[0]
        with np.load(os.path.join(out, "npz", name + ".npz")) as z:
            assert sorted(z.files) == ["arr_0", "arr_1"]
            image, label = z["arr_0"], z["arr_1"]
        assert image.shape == (CHIP, CHIP, 3) and label.shape == (CHIP, CHIP) and label.dtype == np.uint8
        np.testing.assert_array_equal(image, np.moveaxis(gdal.Open(os.path.join(out, r["image"])).ReadAsArray(), 0, -1))
        np.testing.assert_array_equal(label, gdal.Open(os.path.join(out, r["mask"])).ReadAsArray())
    assert len(os.listdir(out / "npz")) == len(rows)


@pytest.mark.parametrize(
    ("bands", "dtype", "what"),
    [(3, gdal.GDT_UInt16, "3 bands of UInt16"), (5, gdal.GDT_Byte, "5 bands of Byte")],
)
def test_png_refused_for_non_8bit_or_more_than_4_bands(tmp_path, bands, dtype, what):
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 64, 64, bands=bands, dtype=dtype)
    labels = standard_labels(str(tmp_path / "labels.gpkg"))
    with pytest.raises(GeoSegError, match=f"CHIP_FORMAT: PNG chips need 8-bit.*{what}") as e:
        _export(raster, labels, tmp_path / "out", chip_format="png")
    assert e.value.param == "CHIP_FORMAT"
    assert not os.path.exists(tmp_path / "out")


def test_unknown_format_and_append_with_another_format_are_refused(byte_scene, tmp_path):
    raster, labels, _ = byte_scene
    with pytest.raises(GeoSegError, match="CHIP_FORMAT must be one of geotiff, png, npz"):
        _export(raster, labels, tmp_path / "x", chip_format="jpeg")
    out = tmp_path / "chips"
    _export(raster, labels, out)
    before = tree_snapshot(str(out))
    with pytest.raises(GeoSegError, match="CHIP_FORMAT is png, but the chips folder .* holds geotiff chips"):
        _export(raster, labels, out, chip_format="png", append=True)
    assert tree_snapshot(str(out)) == before


def test_train_reads_png_chips(byte_scene, tmp_path):
    from geoseg.core.dataset import ChipDataset, open_chips
    from geoseg.core.train import TrainParams, train

    raster, labels, _ = byte_scene
    out = tmp_path / "png"
    _export(raster, labels, out, chip_format="png", validation_fraction=0.25)
    folder = open_chips(str(out))
    image, target = ChipDataset(folder, folder.train).read(0)
    assert image.shape == (3, CHIP, CHIP) and target.shape == (CHIP, CHIP)
    result = train(
        TrainParams(str(out), str(tmp_path / "m.pt"), device="cpu", epochs=1, batch_size=4, model_options=TINY)
    )
    assert os.path.isfile(tmp_path / "m.pt") and result is not None
