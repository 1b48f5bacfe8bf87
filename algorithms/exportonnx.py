"""geoseg:exportonnx — `.pt` checkpoint → ONNX model with the same card."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterFile, QgsProcessingParameterFileDestination

from .base import GeoSegAlgorithm, require_torch


class ExportOnnxAlgorithm(GeoSegAlgorithm):
    _name = "exportonnx"
    _display = "Export model to ONNX"
    _help = ("Converts a GeoSeg .pt checkpoint into an ONNX model (dynamic batch, height and width) carrying "
             "the same model card, for segmentation with onnxruntime on any machine. The checkpoint is loaded "
             "without unpickling (weights only).")

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", self.tr("GeoSeg checkpoint (.pt)"), extension="pt"))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", self.tr("ONNX model"), "ONNX model (*.onnx)"))

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.train import export_model_onnx

        def run(p, progress, cancelled):
            return export_model_onnx(*p)

        model = self.parameterAsFile(parameters, "MODEL", context)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        return {"OUTPUT": self.run_core(run, (model, out), feedback)}
