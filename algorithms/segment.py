"""geoseg:segment — Segment raster (thin over core.predict.segment)."""

from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputString

from ..adapter.layers import prepare_processing_copy, remove_copy
from ..core.params import SegmentParams
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters, require_torch


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the loaded class map (or its polygons) with the card's colours and names (main thread)."""

    def __init__(self, classes: list[dict], vector: bool = False) -> None:
        super().__init__()
        self.classes, self.vector = classes, vector

    def postProcessLayer(self, layer, context, feedback) -> None:
        from ..adapter.style import apply_class_style, apply_vector_class_style

        (apply_vector_class_style if self.vector else apply_class_style)(layer, self.classes)


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
        "RESOLUTION chooses the grid the model reads: auto, the model card's pixel size and CRS (a degree raster "
        "without a card CRS: its UTM zone); the raster's own; or PIXEL_SIZE. A different grid is read through a "
        "GDAL warped VRT (RESAMPLING, bilinear by default), still strip by strip.\n\n"
        "The raster is streamed strip by strip, so any size works. OUTPUT is a Byte GeoTIFF on the input's grid "
        "(OUTPUT_GRID 0, nearest neighbour back from the working grid; 1: the working grid) "
        "holding each pixel's class value, 255 where the input is nodata, with the card's colours and names. "
        "OUTPUT_PROBABILITIES optionally holds the softmax probabilities (Float32, one band per class). Outputs "
        "are written under a temporary name and never overwrite existing files.\n\n"
        "SIEVE merges regions smaller than that many pixels into their largest neighbour (GDAL's sieve filter, "
        "4-connected). OUTPUT_VECTOR optionally writes one polygon per region (GeoPackage: value, name, area in m² "
        "for a projected CRS). TTA averages the probabilities of 4 flipped or 8 flipped and turned views of each "
        "tile."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, SegmentParams)  # core/params.py defines them
        self.addOutput(QgsProcessingOutputString("PROVIDER", self.tr("Backend and execution provider used")))

    def prepareAlgorithm(self, parameters, context, feedback) -> bool:
        """On the main thread: clone the provider of an INPUT layer GDAL cannot read (a WMS, a virtual
        raster), which processAlgorithm then copies with this run's progress and cancel."""
        self.prepared_copies, self.prepare_error = {}, None
        try:
            self.prepared_copies["INPUT"] = prepare_processing_copy(self, parameters, "INPUT", context)
        except QgsProcessingException as e:  # raised by processAlgorithm, whose errors Processing reports in full
            self.prepare_error = e
        return True

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.predict import segment

        if getattr(self, "prepare_error", None) is not None:
            raise self.prepare_error
        params = None
        try:
            params = params_from_parameters(self, SegmentParams, parameters, context, feedback)  # writes the copy
            r = self.run_core(segment, params, feedback)
        finally:  # the layer's copy, also when cancelled while copying
            copy = getattr(self, "prepared_copies", {}).get("INPUT")
            remove_copy(copy.path if copy else params.input_path if params else "")
        feedback.pushInfo(
            f"Segmented {r.tiles} tiles in {r.seconds:.1f} s with {r.backend} ({r.provider}), "
            f"batch size {r.final_batch_size}."
        )
        classes = [c.to_dict() for c in r.card.classes]
        self._stylers = []  # must outlive this call
        for path, vector in ((r.output_path, False), (r.vector_path, True)):
            if path and context.willLoadLayerOnCompletion(path):
                self._stylers.append(ClassStyler(classes, vector))
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(self._stylers[-1])
        out = {"OUTPUT": r.output_path, "PROVIDER": f"{r.backend}: {r.provider}"}
        if r.probabilities_path:
            out["OUTPUT_PROBABILITIES"] = r.probabilities_path
        if r.vector_path:
            out["OUTPUT_VECTOR"] = r.vector_path
        return out
