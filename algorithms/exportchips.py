"""geoseg:exportchips — Export training chips (thin over core.chips.export_chips)."""

from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingOutputNumber

from ..core.chips import ExportParams, export_chips
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters


class ExportChipsAlgorithm(GeoSegAlgorithm):
    _name = "exportchips"
    _display = "Export training chips"
    _help = (
        "Cuts a raster and label polygons into image and mask chips for training.\n\n"
        "Chips lie on a sliding grid (origins 0, stride, 2·stride, …); the last chip of each row and "
        "column is shifted back to end on the raster edge. Masks hold the polygon's class value "
        "(pixel-centre rule), BACKGROUND elsewhere and 255 (ignored) where the image is nodata. "
        "Labels in another CRS are reprojected to the raster's.\n\n"
        "Modes: All keeps every chip; Positive keeps chips holding any label; Divided writes "
        "positive/ and background/ sub-folders.\n\n"
        "OUTPUT_DIR must be new or empty (GeoSeg never overwrites). It receives images/, masks/, "
        "chips.csv (with a train/validation split column) and dataset.json (classes, band mean/std "
        "of the training chips, class pixel counts). INDEX optionally writes chip footprints as a "
        "GeoPackage."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, ExportParams)  # core/params.py defines them
        for name, title in (
            ("N_CHIPS", "Chips exported"),
            ("N_TRAIN", "Training chips"),
            ("N_VALIDATION", "Validation chips"),
        ):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(title)))

    def processAlgorithm(self, parameters, context, feedback):
        params = params_from_parameters(self, ExportParams, parameters, context, feedback)
        if params.index_path is not None and not params.index_path.lower().endswith(".gpkg"):
            raise QgsProcessingException(
                "INDEX: the chip index is written as a GeoPackage; " "give a file name ending in .gpkg."
            )
        result = self.run_core(export_chips, params, feedback)
        feedback.pushInfo(
            f"Exported {result.n_chips} of {result.n_grid} grid chips ({result.n_train} train, "
            f"{result.n_validation} validation) to {result.output_dir} in {result.seconds:.1f} s."
        )
        out = {
            "OUTPUT_DIR": result.output_dir,
            "N_CHIPS": result.n_chips,
            "N_TRAIN": result.n_train,
            "N_VALIDATION": result.n_validation,
        }
        if result.index_path:
            out["INDEX"] = result.index_path
        return out
