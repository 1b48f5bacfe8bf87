"""geoseg:assess — Assess accuracy (thin over core.assess.assess)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.assess import AssessParams, assess
from .base import GeoSegAlgorithm
from .layers import raster_path, vector_uri


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
        self.addParameter(QgsProcessingParameterRasterLayer("PREDICTION", self.tr("Class map (prediction)")))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "REFERENCE", self.tr("Reference raster (same grid)"), optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "REFERENCE_VECTOR", self.tr("Reference polygons"), [QgsProcessing.TypeVectorAnyGeometry], optional=True))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", self.tr("Class field of the reference polygons"),
            parentLayerParameterName="REFERENCE_VECTOR", optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_REPORT", self.tr("Report (.html or .json; both are written)"), "HTML (*.html);;JSON (*.json)"))
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY", self.tr("Overall accuracy")))
        self.addOutput(QgsProcessingOutputNumber("MEAN_IOU", self.tr("Mean IoU")))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", self.tr("Macro F1")))
        self.addOutput(QgsProcessingOutputFile("REPORT_JSON", self.tr("JSON report")))

    def processAlgorithm(self, parameters, context, feedback):
        params = AssessParams(
            prediction_path=raster_path(self, parameters, "PREDICTION", context),
            report_path=self.parameterAsFileOutput(parameters, "OUTPUT_REPORT", context),
            reference_path=raster_path(self, parameters, "REFERENCE", context) if parameters.get("REFERENCE") else None,
            reference_vector=vector_uri(self, parameters, "REFERENCE_VECTOR", context, feedback)
            if parameters.get("REFERENCE_VECTOR") else None,
            class_field=self.parameterAsString(parameters, "CLASS_FIELD", context) or None,
        )
        r = self.run_core(assess, params, feedback)
        feedback.pushInfo(f"Overall accuracy {r.overall_accuracy:.4f}, mean IoU {r.mean_iou:.4f}, macro F1 "
                          f"{r.macro_f1:.4f} over {r.pixels} pixels. Report: {r.html_path}")
        return {"OUTPUT_REPORT": r.html_path if params.report_path.lower().endswith(".html") else r.report_path,
                "REPORT_JSON": r.report_path, "OVERALL_ACCURACY": r.overall_accuracy, "MEAN_IOU": r.mean_iou,
                "MACRO_F1": r.macro_f1}
