"""geoseg:exportonnx — `.pt` checkpoint → ONNX model with the same card."""

from __future__ import annotations

from ..core.params import ExportOnnxParams
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters, require_torch


class ExportOnnxAlgorithm(GeoSegAlgorithm):
    _name = "exportonnx"
    _display = "Export model to ONNX"
    _help = (
        "Converts a GeoSeg .pt checkpoint into an ONNX model carrying the same model card, for segmentation "
        "with onnxruntime on any machine. The checkpoint is loaded without unpickling (weights only).\n\n"
        "FORMAT 0 GeoSeg: dynamic batch, height and width; the model returns logits. FORMAT 1 Deepness: "
        "fixed chip size (the card's), dynamic batch, softmax probabilities inside the graph (one sigmoid "
        "channel for a two-class model), and Deepness's metadata keys (model_type, class_names, resolution "
        "in cm, tile_size, tiles_overlap, standardization_mean/std on the ×1/255 scale, seg_thresh 0.5, "
        "seg_small_segment) beside the GeoSeg card, so the file runs in Deepness and in GeoSeg."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, ExportOnnxParams)  # core/params.py defines them

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.train import export_model_onnx

        def run(p: ExportOnnxParams, progress, cancelled) -> str:
            return export_model_onnx(p.model_path, p.output_path, cancelled, p.format)

        params = params_from_parameters(self, ExportOnnxParams, parameters, context, feedback)
        return {"OUTPUT": self.run_core(run, params, feedback)}
