"""geoseg:segment — Segment raster (thin over core.predict.segment)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.options import BACKENDS, DEVICES
from .base import GeoSegAlgorithm, advanced, require_torch
from .layers import raster_path

Int = QgsProcessingParameterNumber.Integer


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the loaded class map with the card's colours and names (runs on the main thread)."""

    def __init__(self, classes: list[dict]) -> None:
        super().__init__()
        self.classes = classes

    def postProcessLayer(self, layer, context, feedback) -> None:
        from ..ui.style import apply_class_style

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
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Input raster")))
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", self.tr("Model (.onnx or .pt)"), fileFilter="GeoSeg models (*.onnx *.pt)"))
        self.addParameter(QgsProcessingParameterNumber(
            "CHIP_SIZE", self.tr("Chip size (pixels; default: from the model card)"), Int, optional=True, minValue=8))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE_X", self.tr("Stride X (pixels; default: half the chip)"), Int, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE_Y", self.tr("Stride Y (pixels; default: half the chip)"), Int, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "CROP", self.tr("Crop at interior tile edges (pixels; default: chip / 8)"), Int, optional=True,
            minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", self.tr("Batch size (0: automatic, within the memory budget)"), Int, 8, minValue=0))
        advanced(self, [
            QgsProcessingParameterEnum("BACKEND", self.tr("Backend"), ["Auto", "onnxruntime", "torch"], defaultValue=0),
            QgsProcessingParameterEnum("DEVICE", self.tr("Device"), ["Auto (GPU when available)", "CPU", "CUDA GPU"],
                                       defaultValue=0),
            QgsProcessingParameterNumber("MEMORY_BUDGET", self.tr(
                "Memory budget of one inference batch (MB; 0 = none): halve the batch when over it"),
                QgsProcessingParameterNumber.Double, 0, minValue=0),
        ])
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Class map")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITIES", self.tr("Class probabilities"), optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputString("PROVIDER", self.tr("Backend and execution provider used")))

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.predict import SegmentParams, segment

        def optional_int(name: str) -> int | None:
            value = parameters.get(name)
            return None if value in (None, "") else self.parameterAsInt(parameters, name, context)

        probs = self.parameterAsOutputLayer(parameters, "OUTPUT_PROBABILITIES", context) \
            if parameters.get("OUTPUT_PROBABILITIES") else None
        params = SegmentParams(
            input_path=raster_path(self, parameters, "INPUT", context),
            model_path=self.parameterAsFile(parameters, "MODEL", context),
            output_path=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
            probabilities_path=probs or None,
            chip_size=optional_int("CHIP_SIZE"),
            stride_x=optional_int("STRIDE_X"),
            stride_y=optional_int("STRIDE_Y"),
            crop=optional_int("CROP"),
            batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            backend=BACKENDS[self.parameterAsEnum(parameters, "BACKEND", context)],
            device=DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)],
            memory_budget_mb=self.parameterAsDouble(parameters, "MEMORY_BUDGET", context),
        )
        r = self.run_core(segment, params, feedback)
        feedback.pushInfo(f"Segmented {r.tiles} tiles in {r.seconds:.1f} s with {r.backend} ({r.provider}), "
                          f"batch size {r.final_batch_size}.")
        if context.willLoadLayerOnCompletion(r.output_path):
            self._styler = ClassStyler(r.card["classes"])  # must outlive this call
            context.layerToLoadOnCompletionDetails(r.output_path).setPostProcessor(self._styler)
        out = {"OUTPUT": r.output_path, "PROVIDER": f"{r.backend}: {r.provider}"}
        if r.probabilities_path:
            out["OUTPUT_PROBABILITIES"] = r.probabilities_path
        return out
