"""Issue 13, families 1 and 2: the one validator of a chips folder (core/dataset_check.py) and the
one path-containment check (core/paths.py), below the bad-input table's level of detail."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time

import numpy as np
import pytest
from osgeo import gdal

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.dataset import ChipDataset, open_chips
from geoseg.core.dataset_check import check_description
from geoseg.core.errors import GeoSegError
from geoseg.core.paths import inside
from tests.support.helpers import make_raster, standard_labels


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("chips"))
    make_raster(f"{d}/rgb.tif", 64, 48, bands=3, dtype=gdal.GDT_Byte, nodata=None)
    standard_labels(f"{d}/labels.gpkg")
    export_chips(
        ExportParams(
            f"{d}/rgb.tif", f"{d}/labels.gpkg", f"{d}/chips", class_field="cls", chip_size=32, validation_fraction=0.25
        )
    )
    return f"{d}/chips"


@pytest.fixture
def copy(chips, tmp_path) -> str:
    shutil.copytree(chips, tmp_path / "c")
    return str(tmp_path / "c")


def _json(folder: str, change) -> None:
    with open(f"{folder}/dataset.json") as f:
        data = json.load(f)
    change(data)
    with open(f"{folder}/dataset.json", "w") as f:
        json.dump(data, f)


def _rows(folder: str) -> list[dict]:
    with open(f"{folder}/chips.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(folder: str, rows: list[dict]) -> None:
    with open(f"{folder}/chips.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------ paths.inside
@pytest.mark.parametrize(
    "rel, why",
    [
        ("../x.tif", "leads outside"),
        ("images/../../x.tif", "leads outside"),
        ("/etc/passwd", "an absolute path"),
        ("C:\\data\\x.tif", "an absolute path"),
        ("\\\\server\\share\\x.tif", "an absolute path"),
        ("", "empty"),
        (".", "leads outside"),
    ],
)
def test_inside_refuses(tmp_path, rel, why):
    with pytest.raises(GeoSegError, match=why) as e:
        inside(str(tmp_path), rel, "CHIPS: chips.csv row 7, image", "CHIPS")
    assert str(e.value).startswith("CHIPS: chips.csv row 7, image: ") and e.value.param == "CHIPS"


def test_inside_follows_links(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "outside.tif").write_text("x")
    os.symlink(tmp_path / "outside.tif", tmp_path / "f" / "link.tif")
    os.symlink(tmp_path / "f" / "a.tif", tmp_path / "f" / "inner.tif")  # a link that stays inside is fine
    with pytest.raises(GeoSegError, match="leads outside"):
        inside(str(tmp_path / "f"), "link.tif")
    assert inside(str(tmp_path / "f"), "sub/./../inner.tif") == str((tmp_path / "f" / "a.tif").resolve())


# ------------------------------------------------------------------ dataset.json as a whole
GOOD = {
    "classes": [{"value": 0, "name": "bg", "color": "#000000"}, {"value": 4, "name": "x", "color": "#AbCdEf"}],
    "in_channels": 2,
    "bands": [1, 2],
    "chip_size": 32,
    "normalization": {"mean": [1, 2], "std": [1, 0.5]},
}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.__setitem__("classes", {"0": "bg"}), "'classes' must be a non-empty list"),
        (lambda d: d.__setitem__("classes", []), "'classes' must be a non-empty list"),
        (lambda d: d["classes"].append("forest"), "class 3 must be an object"),
        (lambda d: d["classes"][1].update(value=True), "class 2 has value True"),
        (lambda d: d["classes"][1].update(value=255), "class 2 has value 255"),
        (lambda d: d["classes"][1].update(value=-1), "class 2 has value -1"),
        (lambda d: d["classes"][1].update(value=2.0), "class 2 has value 2.0"),
        (lambda d: d["classes"][1].update(name="  "), "needs a non-empty name"),
        (lambda d: d["classes"][1].update(color="#12345"), "has color '#12345'"),
        (lambda d: d.__setitem__("in_channels", "2"), "'in_channels' must be a positive integer"),
        (lambda d: d.__setitem__("bands", [1, 2, 3]), "lists 3 bands, but in_channels is 2"),
        (lambda d: d.__setitem__("chip_size", None), "'chip_size' must be a positive integer"),
        (lambda d: d.pop("normalization"), "has no 'normalization' object"),
        (lambda d: d["normalization"].update(std=[1, "2"]), "std of band 2 is '2', not a finite number"),
        (lambda d: d["normalization"].update(mean=[1, float("inf")]), "mean of band 2 is inf"),
        (lambda d: d["normalization"].update(std=[-1, 1]), "std of band 1 is -1: the band is constant"),
    ],
)
def test_description_refused(change, message):
    data = json.loads(json.dumps(GOOD))
    change(data)
    with pytest.raises(
        GeoSegError, match=message.replace("(", r"\(").replace("'", ".").replace("[", r"\[").replace(")", r"\)")
    ) as e:
        check_description(data)
    assert str(e.value).startswith("CHIPS: dataset.json ")


def test_description_good():
    check_description(GOOD)


@pytest.mark.parametrize("content, kind", [([1], "list"), ("x", "string"), (3, "number"), (None, "null")])
def test_description_not_an_object(content, kind):
    with pytest.raises(GeoSegError, match=f"it holds a JSON {kind}"):
        check_description(content)


# ------------------------------------------------------------------ the chips, as a whole
def test_mask_of_another_type_with_an_unlisted_value(copy):
    mask = f"{copy}/{_rows(copy)[2]['mask']}"
    ds = gdal.GetDriverByName("GTiff").Create(mask, 32, 32, 1, gdal.GDT_UInt16)
    ds.GetRasterBand(1).WriteArray(np.full((32, 32), 300, np.uint16))
    ds = None
    with pytest.raises(GeoSegError, match=r"holds the value 300, which dataset.json does not list"):
        open_chips(copy)


def test_mask_size_differs_from_its_image(copy):
    mask = f"{copy}/{_rows(copy)[0]['mask']}"
    gdal.GetDriverByName("GTiff").Create(mask, 16, 16, 1, gdal.GDT_Byte).FlushCache()
    with pytest.raises(GeoSegError, match=r"is 16 × 16 pixels, but its image .* is 32 × 32"):
        open_chips(copy)


def test_unlisted_value_names_the_mask_and_the_classes(copy):
    rows = _rows(copy)
    path = f"{copy}/{rows[1]['mask']}"
    ds = gdal.Open(path, gdal.GA_Update)
    a = ds.ReadAsArray()
    a[0, :3] = [200, 201, 255]  # 255 (ignore) is always allowed
    ds.GetRasterBand(1).WriteArray(a)
    ds = None
    with pytest.raises(GeoSegError) as e:
        open_chips(copy)
    assert f"CHIPS: {rows[1]['mask']} holds class values 200, 201, which dataset.json does not list" in str(e.value)


def test_broken_chip_is_a_message(copy):
    rows = _rows(copy)
    with open(f"{copy}/{rows[0]['image']}", "wb") as f:
        f.write(b"II*\x00garbage")
    with pytest.raises(GeoSegError, match=f"CHIPS: {rows[0]['image']} is not a raster GDAL can read"):
        open_chips(copy)


@pytest.mark.parametrize("failure", ["none", "raise"])
def test_gdal_errors_never_escape(chips, monkeypatch, failure):
    """GDAL returns None with exceptions off (as QGIS may leave them) and raises RuntimeError with them
    on: both are a GeoSegError, at the check and in the dataset's reads during training."""
    import geoseg.core.dataset_check as dc

    folder = open_chips(chips)

    def broken(*args):
        if failure == "raise":
            raise RuntimeError("`x.tif' not recognized as a supported file format.")

    monkeypatch.setattr(dc.gdal, "Open", broken)
    with pytest.raises(GeoSegError, match="is not a raster GDAL can read"):
        open_chips(chips)
    with pytest.raises(GeoSegError, match="is not a raster GDAL can read"):
        ChipDataset(folder, folder.train).read(0)


def test_dataset_reads_check_paths_again(chips, tmp_path):
    """chips.csv edited after the check (or a row handed in directly): the read refuses too."""
    folder = open_chips(chips)
    ds = ChipDataset(folder, [{**folder.train[0], "image": "../../outside.tif"}])
    with pytest.raises(GeoSegError, match="leads outside"):
        ds.read(0)
    image, target = ChipDataset(folder, folder.train).read(0)
    assert image.shape == (3, 32, 32) and target.shape == (32, 32)


def test_row_is_named(copy):
    rows = _rows(copy)
    rows[2]["mask"] = "masks/../../" + os.path.basename(copy) + "/" + rows[2]["mask"]  # out and back in: fine
    rows[3]["image"] = "images/../../../x.tif"
    _write_rows(copy, rows)
    with pytest.raises(GeoSegError, match=r"^CHIPS: chips.csv row 4, image: 'images/../../../x.tif' leads outside"):
        open_chips(copy)


def test_validation_cost(chips, tmp_path):
    """The whole-folder check opens every chip header and reads every mask: cheap (here 4 chips;
    on the demo's 99 chips of 128 px it took about 30 ms)."""
    t = time.perf_counter()
    for _ in range(5):
        open_chips(chips)
    assert (time.perf_counter() - t) / 5 < 1.0
