"""Accuracy assessment: a class map against reference data on the same grid, streamed.

The reference is a raster on the prediction's grid, or polygons with an integer class field
(rasterized window by window with the pixel-centre rule; pixels outside every polygon have
no reference). Pixels that are nodata in either raster are excluded. The result is a
confusion matrix over class values, per-class precision, recall, F1 and IoU, OA, mIoU and
macro F1, written as JSON and as a readable HTML page.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from .errors import Cancelled, GeoSegError, IsCancelled, Progress, first_line
from .gdalx import with_gdal_exceptions
from .grid import Window
from .labels import Labels, load_labels
from .metrics import metrics_from_confusion
from .params import AssessParams  # defined once there, with its front-end metadata
from .raster import MASK_NODATA, RasterInfo, category_names, open_raster, raster_info
from .staging import check_new_file, remove_stale_outputs, staged_file

ROWS = 256  # rows per streamed strip
log = logging.getLogger("geoseg")


@dataclass(frozen=True)
class AssessResult:
    report_path: str
    html_path: str
    values: list[int]
    confusion: list[list[int]]
    overall_accuracy: float
    mean_iou: float
    macro_f1: float
    pixels: int
    seconds: float


def report_paths(path: str) -> tuple[str, str]:
    """(json, html): the report is written in both formats, beside each other."""
    stem, ext = os.path.splitext(path)
    if ext.lower() not in (".json", ".html"):
        raise GeoSegError(
            f"OUTPUT_REPORT must end in .json or .html (got {path}); both are written.", param="OUTPUT_REPORT"
        )
    return stem + ".json", stem + ".html"


def _same_grid(a: RasterInfo, b: RasterInfo) -> None:
    if (a.width, a.height) != (b.width, b.height):
        raise GeoSegError(
            f"REFERENCE is {b.width} × {b.height} pixels but PREDICTION is {a.width} × {a.height}; "
            "they must share one grid (resample the reference onto the prediction).",
            param="REFERENCE",
        )
    tol = 1e-6 * max(abs(a.geotransform[1]), abs(a.geotransform[5]))
    if any(abs(x - y) > tol for x, y in zip(a.geotransform, b.geotransform, strict=True)):
        raise GeoSegError(
            "REFERENCE and PREDICTION have the same size but a different geotransform (origin or "
            "pixel size); they must share one grid.",
            param="REFERENCE",
        )
    if a.srs is not None and b.srs is not None and not a.srs.IsSame(b.srs):
        raise GeoSegError(
            "REFERENCE and PREDICTION are in different CRSs; they must share one grid.", param="REFERENCE"
        )


class PairCounts:
    """Pixel counts of (reference, prediction) value pairs, for any integer values: a dense
    256 × 256 table for Byte-range values, a dictionary for the rest (a UInt16 class 300)."""

    MAX_VALUES = 1024  # more distinct values than this: not a class raster

    def __init__(self) -> None:
        self.dense = np.zeros(256 * 256, dtype=np.int64)
        self.sparse: dict[tuple[int, int], int] = {}

    def add(self, ref: np.ndarray, pred: np.ndarray) -> None:
        small = (ref >= 0) & (ref < 256) & (pred >= 0) & (pred < 256)
        self.dense += np.bincount(ref[small] * 256 + pred[small], minlength=256 * 256)
        if not small.all():
            pairs, counts = np.unique(np.stack([ref[~small], pred[~small]]), axis=1, return_counts=True)
            for (r, q), n in zip(pairs.T.tolist(), counts.tolist(), strict=True):
                self.sparse[(r, q)] = self.sparse.get((r, q), 0) + n
            if len({v for pair in self.sparse for v in pair}) > self.MAX_VALUES:
                raise GeoSegError(
                    f"PREDICTION and REFERENCE hold more than {self.MAX_VALUES} distinct values; "
                    "both must be class rasters."
                )

    def matrix(self) -> tuple[list[int], np.ndarray]:
        """(sorted values occurring in either raster, confusion matrix [reference, prediction])."""
        full = self.dense.reshape(256, 256)
        values = {int(v) for v in np.flatnonzero(full.sum(axis=0) + full.sum(axis=1))}
        values |= {v for pair in self.sparse for v in pair}
        order = sorted(values)
        index = {v: i for i, v in enumerate(order)}
        small = [v for v in order if 0 <= v < 256]
        matrix = np.zeros((len(order), len(order)), dtype=np.int64)
        pos = [index[v] for v in small]
        matrix[np.ix_(pos, pos)] = full[np.ix_(small, small)]
        for (r, q), n in self.sparse.items():
            matrix[index[r], index[q]] += n
        return order, matrix


ASSESS_NAMES = {"LABELS": "REFERENCE_VECTOR", "INPUT": "PREDICTION"}  # shared helpers' names → assess's own


def _as_assess_error(call):
    """Run `call`; a GeoSegError from a helper shared with exportchips names assess's parameters instead."""
    try:
        return call()
    except GeoSegError as e:
        text = re.sub(r"\b(LABELS|INPUT)\b", lambda m: ASSESS_NAMES[m.group(1)], str(e))
        param = ASSESS_NAMES.get(e.param, e.param)
        raise GeoSegError(text, param=param) from None


def validate(p: AssessParams) -> None:
    """Cheap checks before any file is opened: one reference (with its class field), report names that
    end in .json or .html, neither report existing. The dialog calls it before starting a task."""
    if bool(p.reference_path) == bool(p.reference_vector):
        raise GeoSegError(
            "Give exactly one reference: REFERENCE (a raster) or REFERENCE_VECTOR (polygons).",
            param="REFERENCE" if not p.reference_vector else "REFERENCE_VECTOR",
        )
    if p.reference_vector and not p.class_field:
        raise GeoSegError(
            "CLASS_FIELD: give the integer field of REFERENCE_VECTOR that holds each polygon's class.",
            param="CLASS_FIELD",
        )
    for path in report_paths(p.report_path):
        check_new_file(path, "OUTPUT_REPORT", param="OUTPUT_REPORT")


def _read_rows(ds, path: str, what: str, y: int, width: int, h: int) -> np.ndarray:
    """Rows y … y+h of band 1 as int64; a damaged file gives one line naming the parameter and the file."""
    try:
        return ds.GetRasterBand(1).ReadAsArray(0, y, width, h).astype(np.int64)
    except RuntimeError as e:
        raise GeoSegError(f"{what}: reading rows {y}-{y + h} of {path} failed ({first_line(e)}).", param=what) from None


@with_gdal_exceptions
def assess(
    p: AssessParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> AssessResult:
    """Compare `p.prediction_path` with the reference; write the reports; return the figures."""
    t0, started = time.perf_counter(), time.time()
    validate(p)
    json_path, html_path = report_paths(p.report_path)
    remove_stale_outputs((json_path, html_path), started)  # left by a killed run (SIGKILL)
    pred_ds = open_raster(p.prediction_path, "PREDICTION")
    pred = raster_info(pred_ds, p.prediction_path, "PREDICTION")
    if pred.band_count != 1 or pred.is_float:
        raise GeoSegError(
            "PREDICTION must be a single-band integer class raster (as written by Segment).", param="PREDICTION"
        )
    ref_ds = None
    labels: Labels | None = None
    ref_nodata = None
    if p.reference_path:
        ref_ds = open_raster(p.reference_path, "REFERENCE")
        ref = raster_info(ref_ds, p.reference_path, "REFERENCE")
        if ref.band_count != 1 or ref.is_float:
            bands = f"has {ref.band_count} bands" if ref.band_count != 1 else "is a floating-point raster"
            raise GeoSegError(
                f"REFERENCE {bands}; it must be a single-band integer class raster (extract the "
                "band that holds the classes first).",
                param="REFERENCE",
            )
        _same_grid(pred, ref)
        ref_nodata = ref.nodata[0]
    else:
        vector = p.reference_vector or ""  # validate() refused a run with neither reference
        labels = _as_assess_error(lambda: load_labels(vector, pred, p.class_field))
    pairs = PairCounts()
    pred_nodata = pred.nodata[0]
    for y in range(0, pred.height, ROWS):
        if cancelled():
            raise Cancelled()
        h = min(ROWS, pred.height - y)
        a = _read_rows(pred_ds, p.prediction_path, "PREDICTION", y, pred.width, h)
        if ref_ds is not None:
            b = _read_rows(ref_ds, p.reference_path or "", "REFERENCE", y, pred.width, h)  # set: ref_ds is open
            ok = np.ones(b.shape, bool) if ref_nodata is None else b != ref_nodata
        else:
            assert labels is not None  # no reference raster: the vector was loaded above
            b = labels.rasterize(pred, Window(0, y, pred.width, h), MASK_NODATA).astype(np.int64)
            ok = b != MASK_NODATA
        if pred_nodata is not None:
            ok &= a != pred_nodata
        pairs.add(b[ok], a[ok])
        progress(0.95 * (y + h) / pred.height)
    values, matrix = pairs.matrix()
    if not values:
        raise GeoSegError(
            "No pixel has both a prediction and a reference (check nodata and the reference's " "extent)."
        )
    # a predicted value the reference never holds is a wrong prediction of whatever the reference says there:
    # it stays in the matrix (lowering OA and those classes' recall) and is named in the report
    absent = [
        {"value": v, "pixels": int(matrix[:, i].sum())}
        for i, v in enumerate(values)
        if matrix[i].sum() == 0 and matrix[:, i].sum() > 0
    ]
    for x in absent:
        log.warning(
            "PREDICTION holds %d pixels of value %d, which the reference never holds; they count as " "errors.",
            x["pixels"],
            x["value"],
        )
    m = metrics_from_confusion(matrix)
    names = {**(category_names(p.reference_path) if p.reference_path else {}), **category_names(p.prediction_path)}
    class_names = [names.get(v, f"class {v}") for v in values]
    report = {
        "prediction": os.path.abspath(p.prediction_path),
        "reference": os.path.abspath(p.reference_path) if p.reference_path else p.reference_vector,
        "class_field": p.class_field,
        "values": values,
        "confusion_matrix": {"rows": "reference", "columns": "prediction", "matrix": matrix.tolist()},
        "predicted_values_not_in_reference": absent,
        **m.as_dict(class_names),
    }
    for entry, value in zip(report["classes"], values, strict=True):
        entry["value"] = value
    with staged_file(json_path, "OUTPUT_REPORT") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        with staged_file(html_path, "OUTPUT_REPORT") as tmp_html:
            with open(tmp_html, "w", encoding="utf-8") as f:
                f.write(render_html(report, values, class_names, matrix))
            if cancelled():  # last chance: both reports are still temporary files, removed on the way out
                raise Cancelled()
    progress(1.0)
    return AssessResult(
        json_path,
        html_path,
        values,
        matrix.tolist(),
        float(m.overall_accuracy),
        float(m.mean_iou),
        float(m.macro_f1),
        int(m.total),
        time.perf_counter() - t0,
    )


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def render_html(report: dict, values: list[int], names: list[str], matrix: np.ndarray) -> str:
    """A self-contained page: summary, confusion matrix and a per-class bar chart (inline SVG)."""
    e = html.escape
    per = report["classes"]
    head = "".join(f"<th>{e(n)}<br><small>{v}</small></th>" for v, n in zip(values, names, strict=True))
    rows = []
    for i, (v, n) in enumerate(zip(values, names, strict=True)):
        cells = "".join(f'<td class="{"d" if i == j else ""}">{matrix[i, j]}</td>' for j in range(len(values)))
        rows.append(f"<tr><th>{e(n)} <small>{v}</small></th>{cells}<td>{matrix[i].sum()}</td></tr>")
    bars = []
    bar_w, gap, h = 14, 40, 160
    for i, c in enumerate(per):
        x = 40 + i * (3 * bar_w + gap)
        for k, (key, colour) in enumerate((("precision", "#0072b2"), ("recall", "#e69f00"), ("iou", "#009e73"))):
            val = c[key] or 0.0
            bars.append(
                f'<rect x="{x + k * bar_w}" y="{20 + h * (1 - val):.1f}" width="{bar_w - 2}" '
                f'height="{h * val:.1f}" fill="{colour}"><title>{e(c["name"])} {key} {_pct(c[key])} %'
                "</title></rect>"
            )
        bars.append(f'<text x="{x}" y="{h + 38}" font-size="11">{e(c["name"])}</text>')
    width = 60 + len(per) * (3 * bar_w + gap)
    absent = report.get("predicted_values_not_in_reference") or []
    warning = (
        ""
        if not absent
        else (
            '<p class="w"><b>Predicted values the reference never holds</b> (counted as errors): '
            + ", ".join(f"value {x['value']}: {x['pixels']} pixels" for x in absent)
            + ".</p>"
        )
    )
    table = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{values[i]}</td><td>{_pct(c['precision'])}</td><td>{_pct(c['recall'])}</td>"
        f"<td>{_pct(c['f1'])}</td><td>{_pct(c['iou'])}</td><td>{c['support']}</td></tr>"
        for i, c in enumerate(per)
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>GeoSeg accuracy report</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}} td.d{{background:#d8f0d8;font-weight:bold}}
small{{color:#666}} p.w{{color:#a00}}</style></head><body>
<h1>Accuracy assessment</h1>
<p>Prediction: <code>{e(str(report['prediction']))}</code><br>Reference: <code>{e(str(report['reference']))}</code></p>
<p><b>Overall accuracy {_pct(report['overall_accuracy'])} %</b> · mean IoU {_pct(report['mean_iou'])} % ·
macro F1 {_pct(report['macro_f1'])} % · {report['total']} pixels (nodata in either raster excluded)</p>
{warning}
<h2>Per class</h2>
<table><tr><th>class</th><th>value</th><th>precision %</th><th>recall %</th><th>F1 %</th><th>IoU %</th>
<th>reference pixels</th></tr>{table}</table>
<svg width="{width}" height="{h + 50}" role="img" aria-label="per-class precision, recall and IoU">
<line x1="35" y1="{20 + h}" x2="{width}" y2="{20 + h}" stroke="#444"/>
<text x="0" y="24" font-size="10">100%</text><text x="10" y="{20 + h}" font-size="10">0</text>
{''.join(bars)}</svg>
<p><span style="color:#0072b2">■</span> precision <span style="color:#e69f00">■</span> recall
<span style="color:#009e73">■</span> IoU</p>
<h2>Confusion matrix</h2><p>Rows: reference; columns: prediction.</p>
<table><tr><th></th>{head}<th>total</th></tr>{''.join(rows)}</table>
</body></html>
"""
