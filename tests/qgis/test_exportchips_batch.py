"""Issue 16: Processing's batch mode over two scenes with APPEND, in one QGIS.

The batch dialog runs one fresh algorithm instance per row, in order, in the same QGIS: row 1 writes the
chips folder (APPEND off), row 2 adds its scene (APPEND on). `processing.run` per row does the same."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from osgeo import gdal

from tests.support.helpers import make_raster, make_vector, standard_labels


def _rows(out: str) -> list[dict]:
    with open(os.path.join(out, "chips.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_batch_rows_append_two_scenes(geoseg_provider, tmp_path):
    import processing

    a, b = str(tmp_path / "scene_a.tif"), str(tmp_path / "scene_b.tif")
    make_raster(a, 128, 96, bands=3, dtype=gdal.GDT_Byte)
    make_raster(b, 96, 64, bands=3, dtype=gdal.GDT_Byte, seed=5, epsg=32632, origin=(800000.0, 5300000.0))
    labels_a = standard_labels(str(tmp_path / "a.gpkg"))
    labels_b = make_vector(
        str(tmp_path / "b.gpkg"),
        [("POLYGON((800010 5299990,800100 5299990,800100 5299900,800010 5299900,800010 5299990))", 2)],
        src_epsg=32632,
    )
    out = str(tmp_path / "chips")
    batch = [  # the batch dialog's rows: only INPUT, LABELS and APPEND differ
        {"INPUT": a, "LABELS": labels_a, "APPEND": False},
        {"INPUT": b, "LABELS": labels_b, "APPEND": True},
    ]
    results = []
    for row in batch:
        results.append(
            processing.run(
                "geoseg:exportchips",
                {**row, "CLASS_FIELD": "cls", "CHIP_SIZE": 32, "OUTPUT_DIR": out, "CHIP_FORMAT": 2},
            )
        )
    assert [os.path.abspath(r["OUTPUT_DIR"]) for r in results] == [os.path.abspath(out)] * 2
    rows = _rows(out)
    assert {r["scene"] for r in rows} == {"scene_a", "scene_b"}
    dataset = json.load(open(os.path.join(out, "dataset.json"), encoding="utf-8"))
    assert [s["id"] for s in dataset["scenes"]] == ["scene_a", "scene_b"] and dataset["chips"] == len(rows)
    parts = []  # the statistics over all training chips at once
    for r in rows:
        assert os.path.isfile(os.path.join(out, "npz", os.path.basename(r["image"])[:-4] + ".npz"))
        if r["split"] == "train":
            px = gdal.Open(os.path.join(out, r["image"])).ReadAsArray().reshape(3, -1).astype(np.float64)
            parts.append(px[:, (px != 0).all(axis=0)])  # nodata 0
    v = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(dataset["normalization"]["mean"], v.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(dataset["normalization"]["std"], v.std(axis=1), rtol=1e-9)
