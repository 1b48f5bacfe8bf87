"""geoseg:assess — Assess accuracy (thin over core.assess.assess)."""

from __future__ import annotations

from qgis.core import QgsProcessingOutputFile, QgsProcessingOutputNumber

from ..core.assess import AssessParams, assess
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters


class AssessAlgorithm(GeoSegAlgorithm):
    _name = "assess"
    _display = "Assess accuracy"
    _help = (
        "Compares a class map with reference data: a raster on the same grid (REFERENCE), or polygons with an "
        "integer class field (REFERENCE_VECTOR + CLASS_FIELD; pixels outside every polygon have no reference). "
        "Pixels that are nodata in either are excluded. Writes a JSON report and a readable HTML page (both, "
        "beside each other) with the confusion matrix (rows: reference), overall accuracy, per-class precision, "
        "recall, F1 and IoU, mean IoU and macro F1. Existing files are never overwritten."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, AssessParams)  # core/params.py defines them
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY", self.tr("Overall accuracy")))
        self.addOutput(QgsProcessingOutputNumber("MEAN_IOU", self.tr("Mean IoU")))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", self.tr("Macro F1")))
        self.addOutput(QgsProcessingOutputFile("REPORT_JSON", self.tr("JSON report")))

    def processAlgorithm(self, parameters, context, feedback):
        params = params_from_parameters(self, AssessParams, parameters, context, feedback)
        r = self.run_core(assess, params, feedback)
        feedback.pushInfo(
            f"Overall accuracy {r.overall_accuracy:.4f}, mean IoU {r.mean_iou:.4f}, macro F1 "
            f"{r.macro_f1:.4f} over {r.pixels} pixels. Report: {r.html_path}"
        )
        return {
            "OUTPUT_REPORT": r.html_path if params.report_path.lower().endswith(".html") else r.report_path,
            "REPORT_JSON": r.report_path,
            "OVERALL_ACCURACY": r.overall_accuracy,
            "MEAN_IOU": r.mean_iou,
            "MACRO_F1": r.macro_f1,
        }
