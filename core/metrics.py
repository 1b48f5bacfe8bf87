"""Per-class accuracy metrics from a confusion matrix, numpy only.

The assess step runs without torch, so nothing here imports it. The confusion matrix is
accumulated chip by chip (matrices add), and every metric is derived from the summed matrix.

Conventions, per class c with TP = cm[c, c], FP = column sum - TP, FN = row sum - TP:

- precision = TP / (TP + FP); NaN only when TP + FP == 0 (the class was never predicted:
  there is no prediction to be right or wrong about).
- recall = TP / (TP + FN); NaN only when TP + FN == 0 (the class is absent from the reference).
  A class in the reference that is never predicted therefore has recall 0, not NaN.
- F1 = 2 TP / (2 TP + FP + FN) (= 2 P R / (P + R) where both are defined) and
  IoU = TP / (TP + FP + FN): both are 0 for a class that occurs in the reference or the
  prediction but is never hit (TP == 0), and NaN only when TP + FP + FN == 0, i.e. the
  class is absent from both, where there is nothing to score.
- mean IoU and macro F1 are nan-means: averages over the classes where the value is defined,
  so a class absent from both the reference and the prediction neither helps nor hurts.
  They are NaN only when no class is defined (an empty matrix).
- overall accuracy = trace / total; NaN for an empty matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _as_labels(a: np.ndarray, what: str) -> np.ndarray:
    """Integer label array; floats are accepted only when every value is a whole number."""
    a = np.asarray(a)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        return a
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.floor(a)):
            raise ValueError(f"{what} holds non-integer values.")
        return a
    raise ValueError(f"{what} must be an integer array (got dtype {a.dtype}).")


def confusion_matrix(
    reference: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """int64 [C, C] counts: rows are the reference class, columns the predicted class.

    A pixel is counted when its reference is in [0, C), differs from `ignore_index` and
    `valid` (if given) is True there. Only counted pixels' predictions are checked: a
    prediction outside [0, C) there raises ValueError, while excluded pixels (nodata in
    either raster) may hold any fill value.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1 (got {num_classes}).")
    ref = _as_labels(reference, "reference")
    pred = _as_labels(prediction, "prediction")
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}.")
    ref = ref.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    keep = (ref >= 0) & (ref < num_classes)
    if ignore_index is not None:
        keep &= ref != ignore_index
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != np.shape(reference):
            raise ValueError(f"valid mask shape {valid.shape} differs from reference shape {np.shape(reference)}.")
        keep &= valid.reshape(-1).astype(bool, copy=False)
    ref = ref[keep]
    pred = pred[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        bad = pred[(pred < 0) | (pred >= num_classes)]
        raise ValueError(
            f"prediction holds class {int(bad[0])} outside [0, {num_classes}) at " f"{bad.size} counted pixel(s)."
        )
    counts = np.bincount(ref * num_classes + pred, minlength=num_classes * num_classes)
    return counts.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (no warning)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) values; NaN when none is defined (no warning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True)
class Metrics:
    """Scores derived from one confusion matrix; see the module docstring for the NaN rules.

    Per-class lists are indexed by class value. `support` counts reference pixels and
    `predicted` predicted pixels per class; `total` is the number of pixels counted.
    `mean_iou` and `macro_f1` average only the classes where the value is defined (nanmean).
    """

    precision: list[float]
    recall: list[float]
    f1: list[float]
    iou: list[float]
    support: list[int]
    predicted: list[int]
    overall_accuracy: float
    mean_iou: float
    macro_f1: float
    total: int

    def as_dict(self, class_names: list[str] | None = None) -> dict:
        """JSON-serialisable summary (NaN becomes None) with one entry per class."""
        n = len(self.support)
        if class_names is not None and len(class_names) != n:
            raise ValueError(f"{len(class_names)} class names given for {n} classes.")
        classes = []
        for c in range(n):
            classes.append(
                {
                    "class": c,
                    "name": class_names[c] if class_names is not None else str(c),
                    "precision": _json_float(self.precision[c]),
                    "recall": _json_float(self.recall[c]),
                    "f1": _json_float(self.f1[c]),
                    "iou": _json_float(self.iou[c]),
                    "support": int(self.support[c]),
                    "predicted": int(self.predicted[c]),
                }
            )
        return {
            "overall_accuracy": _json_float(self.overall_accuracy),
            "mean_iou": _json_float(self.mean_iou),
            "macro_f1": _json_float(self.macro_f1),
            "total": int(self.total),
            "classes": classes,
        }


def metrics_from_confusion(cm: np.ndarray) -> Metrics:
    """Metrics of a [C, C] confusion matrix (rows reference, columns prediction)."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"confusion matrix must be square [C, C] (got shape {cm.shape}).")
    if not np.issubdtype(cm.dtype, np.integer) or (cm < 0).any():
        raise ValueError("confusion matrix must hold non-negative integer counts.")
    cm = cm.astype(np.int64, copy=False)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp = predicted - tp
    fn = support - tp
    total = int(cm.sum())
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    iou = _ratio(tp, tp + fp + fn)
    return Metrics(
        precision=_ratio(tp, tp + fp).tolist(),
        recall=_ratio(tp, tp + fn).tolist(),
        f1=f1.tolist(),
        iou=iou.tolist(),
        support=support.tolist(),
        predicted=predicted.tolist(),
        overall_accuracy=float(tp.sum() / total) if total else math.nan,
        mean_iou=_nanmean(iou),
        macro_f1=_nanmean(f1),
        total=total,
    )
