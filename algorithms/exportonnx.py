"""geoseg:exportonnx — `.pt` checkpoint → ONNX model with the same card."""

from __future__ import annotations

from ..core.params import ExportOnnxParams
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters, require_torch


class ExportOnnxAlgorithm(GeoSegAlgorithm):
    _name = "exportonnx"
    _display = "Export model to ONNX"
    _help = (
        "Converts a GeoSeg .pt checkpoint into an ONNX model (dynamic batch, height and width) carrying "
        "the same model card, for segmentation with onnxruntime on any machine. The checkpoint is loaded "
        "without unpickling (weights only)."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, ExportOnnxParams)  # core/params.py defines them

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.train import export_model_onnx

        def run(p: ExportOnnxParams, progress, cancelled) -> str:
            return export_model_onnx(p.model_path, p.output_path, cancelled)

        params = params_from_parameters(self, ExportOnnxParams, parameters, context, feedback)
        return {"OUTPUT": self.run_core(run, params, feedback)}
