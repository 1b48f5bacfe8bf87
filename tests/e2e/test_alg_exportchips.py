"""geoseg:exportchips through Processing in a real QGIS and through scripts/qgis_process."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProject,
    QgsVectorLayer,
)

from geoseg.core.grid import make_grid
from tests.support.helpers import (
    make_raster,
    make_vector,
    qgis_process,
    rasterize_whole,
    standard_labels,
    tree_snapshot,
    utm_box,
)

W, H = 301, 187
CHIP, SX, SY = 64, 48, 40


@pytest.fixture
def scene(tmp_path):
    """4-band uint16 UTM raster, not square, not a multiple of the strides, with a nodata
    hole; labels stored in EPSG:4326."""
    data = tmp_path / "data"
    data.mkdir()
    raster = str(data / "scene.tif")
    pixels = make_raster(raster, W, H, bands=4, hole=(150, 20, 25, 30))
    labels = standard_labels(str(data / "labels.gpkg"))
    return raster, labels, pixels


def check_chips(out: str, raster: str, labels: str, pixels: np.ndarray) -> int:
    """Every chip equals the source window and the whole-raster rasterization."""
    ref = rasterize_whole(raster, labels)
    ref[(pixels == 0).any(axis=0)] = 255
    gt0 = gdal.Open(raster).GetGeoTransform()
    with open(os.path.join(out, "chips.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        x, y = int(r["xoff"]), int(r["yoff"])
        img = gdal.Open(os.path.join(out, r["image"]))
        np.testing.assert_array_equal(img.ReadAsArray(), pixels[:, y : y + CHIP, x : x + CHIP])
        np.testing.assert_array_equal(
            gdal.Open(os.path.join(out, r["mask"])).ReadAsArray(), ref[y : y + CHIP, x : x + CHIP]
        )
        assert img.GetGeoTransform() == pytest.approx((gt0[0] + 2 * x, 2, 0, gt0[3] - 2 * y, 0, -2))
    return len(rows)


def test_processing_run(geoseg_provider, scene, tmp_path):
    import processing

    raster, labels, pixels = scene
    out = str(tmp_path / "chips")
    res = processing.run(
        "geoseg:exportchips",
        {
            "INPUT": raster,
            "LABELS": labels,
            "CLASS_FIELD": "cls",
            "CHIP_SIZE": CHIP,
            "STRIDE_X": SX,
            "STRIDE_Y": SY,
            "MODE": 0,
            "OUTPUT_DIR": out,
            "INDEX": str(tmp_path / "index.gpkg"),
        },
    )
    n_grid = len(make_grid(W, H, CHIP, SX, SY))
    assert res["N_CHIPS"] == n_grid == check_chips(out, raster, labels, pixels)
    assert res["N_TRAIN"] + res["N_VALIDATION"] == n_grid and res["N_VALIDATION"] == round(0.2 * n_grid)
    assert res["OUTPUT_DIR"] == out and res["INDEX"] == str(tmp_path / "index.gpkg")
    assert QgsVectorLayer(res["INDEX"], "i", "ogr").featureCount() == n_grid


def test_memory_layer_and_selection(geoseg_provider, scene, tmp_path):
    import processing

    raster, _, _ = scene
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=cls:integer", "mem", "memory")
    feats = []
    for wkt, value in ((utm_box(0, 0, 60, 60), 1), (utm_box(100, 100, 160, 160), 2)):
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromWkt(wkt))
        f.setAttribute("cls", value)
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    res = processing.run(
        "geoseg:exportchips",
        {
            "INPUT": raster,
            "LABELS": layer,
            "CLASS_FIELD": "cls",
            "CHIP_SIZE": CHIP,
            "MODE": 1,
            "OUTPUT_DIR": str(tmp_path / "all"),
        },
    )
    assert res["N_CHIPS"] == 1 + 4  # the first square lies in one chip, the second spans 2 x 2
    QgsProject.instance().addMapLayer(layer)
    try:
        layer.selectByIds([next(layer.getFeatures()).id()])
        res = processing.run(
            "geoseg:exportchips",
            {
                "INPUT": raster,
                "LABELS": QgsProcessingFeatureSourceDefinition(layer.id(), True),
                "CLASS_FIELD": "cls",
                "CHIP_SIZE": CHIP,
                "MODE": 1,
                "OUTPUT_DIR": str(tmp_path / "sel"),
            },
        )
        assert res["N_CHIPS"] == 1
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


BAD = {
    "missing field": ({"CLASS_FIELD": "nope"}, "no field 'nope'"),
    "non-integer field": ({"LABELS": "real", "CLASS_FIELD": "cls"}, "is of type Real"),
    "point layer": ({"LABELS": "points"}, "holds Point geometries"),
    "labels outside": ({"LABELS": "far"}, "LABELS do not overlap INPUT"),
    "not writable": ({"OUTPUT_DIR": "/sys/geoseg-chips"}, "OUTPUT_DIR: cannot"),
    "output not empty": ({"OUTPUT_DIR": "taken"}, "is not empty"),
    "index not gpkg": ({"INDEX": "index.shp"}, "give a file name ending in .gpkg"),
}


@pytest.fixture
def bad_inputs(scene, tmp_path):
    raster, labels, _ = scene
    data = tmp_path / "data"
    files = {
        "real": make_vector(str(data / "real.gpkg"), [(utm_box(0, 0, 50, 50), 1.5)], field_type=ogr.OFTReal),
        "points": make_vector(str(data / "pts.gpkg"), [("POINT(500010 5299990)", 1)], geom_type=ogr.wkbPoint),
        "far": make_vector(str(data / "far.gpkg"), [(utm_box(5000, 5000, 5100, 5100), 1)]),
    }
    (data / "taken").mkdir()
    (data / "taken" / "keep.txt").write_text("mine")

    def params(case: str) -> dict:
        overrides, _ = BAD[case]
        p = {
            "INPUT": raster,
            "LABELS": labels,
            "CLASS_FIELD": "cls",
            "CHIP_SIZE": 64,
            "OUTPUT_DIR": str(tmp_path / "out"),
        }
        for k, v in overrides.items():
            p[k] = files.get(v, str(data / v) if v in ("taken", "index.shp") else v)
        return p

    return params, data


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_processing(geoseg_provider, bad_inputs, tmp_path, case):
    import processing

    params, data = bad_inputs
    before = tree_snapshot(str(data))
    with pytest.raises(QgsProcessingException, match=BAD[case][1]):
        processing.run("geoseg:exportchips", params(case))
    assert not (tmp_path / "out").exists()
    assert tree_snapshot(str(data)) == before
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.parametrize(
    "case", ["missing field", "non-integer field", "point layer", "labels outside", "not writable", "output not empty"]
)
def test_bad_input_qgis_process(bad_inputs, tmp_path, case):
    params, data = bad_inputs
    before = tree_snapshot(str(data))
    args = [f"{k}={v}" for k, v in params(case).items()]
    proc = qgis_process("run", "geoseg:exportchips", "--", *args)
    assert proc.returncode != 0
    assert BAD[case][1] in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
    assert tree_snapshot(str(data)) == before


def test_qgis_process_end_to_end(scene, tmp_path):
    raster, labels, pixels = scene
    out = str(tmp_path / "my chips ø")  # spaces and non-ASCII in the path
    before = tree_snapshot(str(tmp_path / "data"))
    proc = qgis_process(
        "run",
        "geoseg:exportchips",
        "--",
        f"INPUT={raster}",
        f"LABELS={labels}",
        "CLASS_FIELD=cls",
        f"CHIP_SIZE={CHIP}",
        f"STRIDE_X={SX}",
        f"STRIDE_Y={SY}",
        f"OUTPUT_DIR={out}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = check_chips(out, raster, labels, pixels)
    assert n == len(make_grid(W, H, CHIP, SX, SY))
    assert f"N_CHIPS:\t{n}" in proc.stdout
    assert tree_snapshot(str(tmp_path / "data")) == before  # inputs untouched (no .aux.xml either)
