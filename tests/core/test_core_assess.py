"""Assessment against hand-made rasters whose confusion matrix is known."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from geoseg.core.assess import AssessParams, assess
from geoseg.core.errors import GeoSegError
from tests.support.helpers import CLASS_GT, make_vector, utm_box, write_classes

# (reference, prediction, count): rows reference 1, 2, 5; columns prediction 1, 2; class 5 is never predicted
CELLS = [(1, 1, 4), (1, 2, 1), (2, 1, 2), (2, 2, 3), (5, 1, 1), (5, 2, 1)]


@pytest.fixture
def pair(tmp_path):
    """12 counted pixels as in CELLS, plus 3 with prediction nodata (255) and 3 with reference nodata (0)."""
    ref, pred = [], []
    for r, p, n in CELLS:
        ref += [r] * n
        pred += [p] * n
    ref += [1, 2, 5, 0, 0, 0]  # 3 pixels of prediction nodata, then 3 of reference nodata
    pred += [255, 255, 255, 1, 2, 1]
    shape = (3, 6)
    return (
        write_classes(str(tmp_path / "pred.tif"), np.array(pred, np.uint8).reshape(shape), 255),
        write_classes(str(tmp_path / "ref.tif"), np.array(ref, np.uint8).reshape(shape), 0),
    )


def test_known_confusion_matrix(pair, tmp_path):
    pred, ref = pair
    r = assess(AssessParams(pred, str(tmp_path / "report.html"), reference_path=ref))
    assert r.values == [1, 2, 5]
    assert r.confusion == [[4, 1, 0], [2, 3, 0], [1, 1, 0]]
    assert r.pixels == 12
    assert r.overall_accuracy == pytest.approx(7 / 12)
    iou = [4 / 8, 3 / 7, 0.0]
    f1 = [8 / 12, 6 / 10, 0.0]
    assert r.mean_iou == pytest.approx(sum(iou) / 3) and r.macro_f1 == pytest.approx(sum(f1) / 3)
    report = json.load(open(tmp_path / "report.json"))
    assert report["confusion_matrix"]["matrix"] == r.confusion
    five = report["classes"][2]
    assert five["value"] == 5 and five["recall"] == 0.0 and five["precision"] is None and five["predicted"] == 0
    assert report["classes"][0]["precision"] == pytest.approx(4 / 7)
    page = (tmp_path / "report.html").read_text()
    assert "Overall accuracy 58.3 %" in page and '<td class="d">4</td>' in page and "<svg" in page


def test_reference_polygons(tmp_path):
    pred = np.full((20, 30), 1, np.uint8)
    pred[:, 15:] = 2
    pred_path = write_classes(str(tmp_path / "pred.tif"), pred, 255)
    # class 1 over columns 0-9, class 2 over columns 10-19 (5 of them predicted 1): rest has no reference
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 10, 20), 1), (utm_box(10, 0, 20, 20), 2)])
    r = assess(AssessParams(pred_path, str(tmp_path / "r.json"), reference_vector=labels, class_field="cls"))
    assert r.values == [1, 2] and r.confusion == [[200, 0], [100, 100]] and r.pixels == 400


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shape": (3, 7)}, "REFERENCE is 7 × 3 pixels but PREDICTION is 6 × 3"),
        ({"gt": (500002.0, 2.0, 0.0, 5300000.0, 0.0, -2.0)}, "different geotransform"),
        ({"epsg": 32634}, "different CRSs"),
    ],
)
def test_grid_mismatch(pair, tmp_path, change, message):
    pred, _ = pair
    other = write_classes(
        str(tmp_path / "other.tif"),
        np.ones(change.get("shape", (3, 6)), np.uint8),
        None,
        gt=change.get("gt", CLASS_GT),
        epsg=change.get("epsg", 32633),
    )
    with pytest.raises(GeoSegError, match=message):
        assess(AssessParams(pred, str(tmp_path / "r.json"), reference_path=other))
    assert not os.path.exists(tmp_path / "r.json") and not os.path.exists(tmp_path / "r.html")


def test_bad_requests(pair, tmp_path):
    pred, ref = pair
    (tmp_path / "taken.html").write_text("mine")
    with pytest.raises(GeoSegError, match="already exists"):
        assess(AssessParams(pred, str(tmp_path / "taken.json"), reference_path=ref))
    assert (tmp_path / "taken.html").read_text() == "mine" and not (tmp_path / "taken.json").exists()
    with pytest.raises(GeoSegError, match="exactly one reference"):
        assess(AssessParams(pred, str(tmp_path / "r.json")))
    with pytest.raises(GeoSegError, match="must end in .json or .html"):
        assess(AssessParams(pred, str(tmp_path / "r.txt"), reference_path=ref))
    empty = write_classes(str(tmp_path / "empty.tif"), np.zeros((3, 6), np.uint8), 0)
    with pytest.raises(GeoSegError, match="No pixel has both"):
        assess(AssessParams(pred, str(tmp_path / "r.json"), reference_path=empty))


def test_class_names_come_from_the_rasters(pair, tmp_path):
    from geoseg.core.raster import set_category_names

    pred, ref = pair
    set_category_names(pred, {1: "water", 2: "forest"})
    set_category_names(ref, {5: "urban"})
    r = assess(AssessParams(pred, str(tmp_path / "r.json"), reference_path=ref))
    report = json.load(open(r.report_path))
    assert [c["name"] for c in report["classes"]] == ["water", "forest", "urban"]
