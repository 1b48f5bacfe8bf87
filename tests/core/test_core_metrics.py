"""Confusion matrix and metrics against a hand-made example whose matrix is known, with
ignored, masked and out-of-range reference pixels mixed in; scores worked out by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from geoseg.core.metrics import Metrics, confusion_matrix, metrics_from_confusion

NAMES = ["water", "forest", "urban", "crop", "bare"]
# rows: reference class, columns: predicted class
#   class 2 (urban) is in the reference but never predicted,
#   class 3 (crop) is predicted once but absent from the reference,
#   class 4 (bare) is absent from both.
CM = np.array(
    [
        [5, 1, 0, 1, 0],
        [2, 6, 0, 0, 0],
        [1, 2, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)
NAN = math.nan


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """reference, prediction, valid [5, 6] uint8/bool holding CM's 18 pixels plus 12 that must not count."""
    pairs = [(r, p) for r in range(5) for p in range(5) for _ in range(CM[r, p])]
    extra_ref, extra_pred, extra_valid = [], [], []
    for p in (0, 1, 4, 7):  # reference nodata; the prediction there may hold anything, even 7
        extra_ref.append(255)
        extra_pred.append(p)
        extra_valid.append(True)
    for r, p in ((0, 0), (1, 1), (2, 2), (0, 3), (4, 4)):  # masked out by `valid`
        extra_ref.append(r)
        extra_pred.append(p)
        extra_valid.append(False)
    for r in (5, 6, 200):  # reference values outside [0, 5)
        extra_ref.append(r)
        extra_pred.append(1)
        extra_valid.append(True)
    ref = np.array([r for r, _ in pairs] + extra_ref, dtype=np.uint8)
    pred = np.array([p for _, p in pairs] + extra_pred, dtype=np.uint8)
    valid = np.array([True] * len(pairs) + extra_valid)
    order = np.random.default_rng(seed).permutation(ref.size)
    return ref[order].reshape(5, 6), pred[order].reshape(5, 6), valid[order].reshape(5, 6)


def assert_list(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if math.isnan(e):
            assert math.isnan(a)
        else:
            assert a == pytest.approx(e, rel=1e-12)


def test_confusion_matrix_rebuilds_the_known_matrix():
    ref, pred, valid = scene()
    cm = confusion_matrix(ref, pred, 5, valid=valid)
    assert cm.dtype == np.int64 and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, CM)
    # without the mask the five masked pixels count: (0,0), (1,1), (2,2), (0,3), (4,4)
    extra = np.zeros((5, 5), dtype=np.int64)
    for r, p in ((0, 0), (1, 1), (2, 2), (0, 3), (4, 4)):
        extra[r, p] += 1
    np.testing.assert_array_equal(confusion_matrix(ref, pred, 5), CM + extra)


def test_confusion_matrix_matches_a_pixel_loop():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 6, (40, 30))
    ref[rng.random(ref.shape) < 0.1] = 255
    pred = rng.integers(0, 6, (40, 30))
    valid = rng.random(ref.shape) < 0.8
    loop = np.zeros((6, 6), dtype=np.int64)
    for r, p, v in zip(ref.ravel(), pred.ravel(), valid.ravel(), strict=True):
        if v and r != 255:
            loop[r, p] += 1
    np.testing.assert_array_equal(confusion_matrix(ref, pred, 6, valid=valid), loop)
    # matrices of parts add up to the matrix of the whole
    halves = confusion_matrix(ref[:20], pred[:20], 6, valid=valid[:20]) + confusion_matrix(
        ref[20:], pred[20:], 6, valid=valid[20:]
    )
    np.testing.assert_array_equal(halves, loop)


def test_prediction_out_of_range_raises():
    ref, pred, valid = scene()
    counted = np.argwhere(valid & (ref < 5))[0]
    for bad in (5, 9):
        p = pred.copy()
        p[tuple(counted)] = bad
        with pytest.raises(ValueError, match=f"class {bad} outside"):
            confusion_matrix(ref, p, 5, valid=valid)
    p = pred.astype(np.int16)
    p[tuple(counted)] = -1
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(ref, p, 5, valid=valid)


def test_confusion_matrix_input_checks():
    ref = np.zeros((2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(ref, np.zeros((3, 2), dtype=np.uint8), 2)
    with pytest.raises(ValueError, match="valid"):
        confusion_matrix(ref, ref, 2, valid=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="non-integer"):
        confusion_matrix(ref, np.full((2, 3), 0.5), 2)
    # whole-number floats are fine; a negative reference is just out of range
    cm = confusion_matrix(np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 0.0]), 2)
    np.testing.assert_array_equal(cm, [[0, 1], [0, 1]])
    # ignore_index None: 255 is only excluded by being outside [0, C)
    assert confusion_matrix(np.array([255, 0]), np.array([0, 0]), 2, ignore_index=None).sum() == 1
    assert confusion_matrix(np.array([1, 0]), np.array([0, 0]), 2, ignore_index=1).sum() == 1


def test_metrics_by_hand():
    m = metrics_from_confusion(CM)
    # class 0: TP 5, FP 2+1 = 3, FN 1+1 = 2   class 1: TP 6, FP 1+2 = 3, FN 2
    # class 2: TP 0, FP 0, FN 3                class 3: TP 0, FP 1, FN 0     class 4: nothing
    assert m.support == [7, 8, 3, 0, 0]
    assert m.predicted == [8, 9, 0, 1, 0]
    assert m.total == 18
    assert_list(m.precision, [5 / 8, 6 / 9, NAN, 0.0, NAN])
    assert_list(m.recall, [5 / 7, 6 / 8, 0.0, NAN, NAN])
    assert_list(m.f1, [10 / 15, 12 / 17, 0.0, 0.0, NAN])
    assert_list(m.iou, [5 / 10, 6 / 11, 0.0, 0.0, NAN])
    # F1 = 2PR / (P + R) where both are defined
    for c in (0, 1):
        p, r = m.precision[c], m.recall[c]
        assert m.f1[c] == pytest.approx(2 * p * r / (p + r))
    assert m.overall_accuracy == pytest.approx(11 / 18)
    # means over the four defined classes; class 4 (absent from both) is left out
    assert m.mean_iou == pytest.approx((1 / 2 + 6 / 11 + 0 + 0) / 4)
    assert m.macro_f1 == pytest.approx((2 / 3 + 12 / 17 + 0 + 0) / 4)


def test_metrics_of_the_scene_end_to_end():
    ref, pred, valid = scene(seed=3)
    m = metrics_from_confusion(confusion_matrix(ref, pred, 5, valid=valid))
    assert m.as_dict(NAMES) == metrics_from_confusion(CM).as_dict(NAMES)  # as_dict: NaN is None, so == works


def test_as_dict_is_json_with_none_for_nan():
    d = metrics_from_confusion(CM).as_dict(NAMES)
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["total"] == 18
    assert back["overall_accuracy"] == pytest.approx(11 / 18)
    assert [c["name"] for c in back["classes"]] == NAMES
    assert [c["class"] for c in back["classes"]] == [0, 1, 2, 3, 4]
    urban, crop, bare = back["classes"][2:]
    assert urban["precision"] is None and urban["recall"] == 0.0 and urban["iou"] == 0.0
    assert crop["recall"] is None and crop["precision"] == 0.0 and crop["f1"] == 0.0
    assert all(bare[k] is None for k in ("precision", "recall", "f1", "iou"))
    assert bare["support"] == 0 and bare["predicted"] == 0
    assert [c["name"] for c in metrics_from_confusion(CM).as_dict()["classes"]] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="class names"):
        metrics_from_confusion(CM).as_dict(NAMES[:3])


def test_empty_and_perfect_matrices():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = metrics_from_confusion(np.zeros((3, 3), dtype=np.int64))
    assert empty.total == 0
    assert math.isnan(empty.overall_accuracy) and math.isnan(empty.mean_iou) and math.isnan(empty.macro_f1)
    assert json.loads(json.dumps(empty.as_dict(), allow_nan=False))["mean_iou"] is None
    perfect = metrics_from_confusion(np.diag([4, 0, 2]))
    assert_list(perfect.iou, [1.0, NAN, 1.0])
    assert perfect.mean_iou == 1.0 and perfect.macro_f1 == 1.0 and perfect.overall_accuracy == 1.0
    assert isinstance(perfect, Metrics)
    with pytest.raises(ValueError):
        metrics_from_confusion(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        metrics_from_confusion(np.array([[1, -1], [0, 2]]))


def test_metrics_module_does_not_import_torch():
    code = "import sys; import geoseg.core.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
