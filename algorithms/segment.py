"""geoseg:segment — Segment raster (thin over core.predict.segment)."""

from __future__ import annotations

from qgis.core import QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputString

from ..core.params import SegmentParams
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters, require_torch


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the loaded class map with the card's colours and names (runs on the main thread)."""

    def __init__(self, classes: list[dict]) -> None:
        super().__init__()
        self.classes = classes

    def postProcessLayer(self, layer, context, feedback) -> None:
        from ..adapter.style import apply_class_style

        apply_class_style(layer, self.classes)


class SegmentAlgorithm(GeoSegAlgorithm):
    _name = "segment"
    _display = "Segment raster"
    _help = (
        "Predicts a class map for a whole raster with a GeoSeg model (.onnx with a GeoSeg card, or .pt from "
        "Train segmentation model).\n\n"
        "Tiles of CHIP_SIZE pixels lie on a grid with strides STRIDE_X/STRIDE_Y (the last row and column are "
        "shifted to end on the raster edge). Each tile keeps only its centre: CROP pixels are dropped at every "
        "tile edge that is not the raster's edge, so tile borders leave no seams. STRIDE must be at most "
        "CHIP_SIZE − 2·CROP. Defaults: chip from the model card, stride half a chip, crop an eighth; the card's "
        "recommended crop is the model's receptive-field radius.\n\n"
        "The raster is streamed strip by strip, so any size works. OUTPUT is a Byte GeoTIFF on the input's grid "
        "holding each pixel's class value, 255 where the input is nodata, with the card's colours and names. "
        "OUTPUT_PROBABILITIES optionally holds the softmax probabilities (Float32, one band per class). Outputs "
        "are written under a temporary name and never overwrite existing files."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, SegmentParams)  # core/params.py defines them
        self.addOutput(QgsProcessingOutputString("PROVIDER", self.tr("Backend and execution provider used")))

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.predict import segment

        params = params_from_parameters(self, SegmentParams, parameters, context, feedback)
        r = self.run_core(segment, params, feedback)
        feedback.pushInfo(
            f"Segmented {r.tiles} tiles in {r.seconds:.1f} s with {r.backend} ({r.provider}), "
            f"batch size {r.final_batch_size}."
        )
        if context.willLoadLayerOnCompletion(r.output_path):
            self._styler = ClassStyler([c.to_dict() for c in r.card.classes])  # must outlive this call
            context.layerToLoadOnCompletionDetails(r.output_path).setPostProcessor(self._styler)
        out = {"OUTPUT": r.output_path, "PROVIDER": f"{r.backend}: {r.provider}"}
        if r.probabilities_path:
            out["OUTPUT_PROBABILITIES"] = r.probabilities_path
        return out
