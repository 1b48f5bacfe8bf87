"""geoseg:assess through scripts/qgis_process and processing.run."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException

from tests.support.helpers import make_vector, qgis_process, utm_box, write_classes


@pytest.fixture
def rasters(tmp_path):
    ref = np.ones((40, 50), np.uint8)
    ref[:, 25:] = 3
    pred = ref.copy()
    pred[:10, :10] = 3  # 100 pixels of class 1 predicted as 3
    pred[30:, 45:] = 255  # 50 pixels of prediction nodata
    return write_classes(str(tmp_path / "pred.tif"), pred, 255), write_classes(str(tmp_path / "ref.tif"), ref, None)


def test_qgis_process_assess(rasters, tmp_path):
    pred, ref = rasters
    report = str(tmp_path / "my report.html")
    proc = qgis_process(
        "run", "geoseg:assess", "--", f"PREDICTION={pred}", f"REFERENCE={ref}", f"OUTPUT_REPORT={report}"
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    out = dict(re.findall(r"^(\w+):\t(.*)$", proc.stdout.split("Results", 1)[-1], flags=re.M))
    assert float(out["OVERALL_ACCURACY"]) == pytest.approx((2000 - 50 - 100) / (2000 - 50))
    data = json.load(open(out["REPORT_JSON"]))
    assert data["confusion_matrix"]["matrix"] == [[900, 100], [0, 950]]
    assert os.path.isfile(report) and out["OUTPUT_REPORT"] == report


def test_qgis_process_grid_mismatch(rasters, tmp_path):
    pred, _ = rasters
    other = write_classes(str(tmp_path / "other.tif"), np.ones((40, 51), np.uint8), None)
    proc = qgis_process(
        "run", "geoseg:assess", "--", f"PREDICTION={pred}", f"REFERENCE={other}", f"OUTPUT_REPORT={tmp_path / 'r.json'}"
    )
    assert proc.returncode != 0 and "REFERENCE is 51 × 40 pixels but PREDICTION is 50 × 40" in proc.stdout + proc.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.html").exists()


def test_processing_reference_polygons(geoseg_provider, rasters, tmp_path):
    import processing

    pred, _ = rasters
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 25, 40), 1), (utm_box(25, 0, 50, 20), 3)])
    res = processing.run(
        "geoseg:assess",
        {
            "PREDICTION": pred,
            "REFERENCE_VECTOR": labels,
            "CLASS_FIELD": "cls",
            "OUTPUT_REPORT": str(tmp_path / "r.json"),
        },
    )
    assert res["OVERALL_ACCURACY"] == pytest.approx((1000 + 500 - 100) / 1500)
    assert gdal.Open(pred) is not None
    with pytest.raises(QgsProcessingException, match="exactly one reference"):
        processing.run("geoseg:assess", {"PREDICTION": pred, "OUTPUT_REPORT": str(tmp_path / "x.json")})
