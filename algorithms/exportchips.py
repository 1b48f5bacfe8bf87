"""geoseg:exportchips — Export training chips (thin over core.chips.export_chips)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from ..core.chips import MODES, ExportParams, export_chips
from ..core.split import SPLIT_METHODS
from .base import GeoSegAlgorithm, advanced
from .layers import raster_path, vector_uri

Int = QgsProcessingParameterNumber.Integer
Dbl = QgsProcessingParameterNumber.Double


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
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Input raster")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "LABELS", self.tr("Label polygons"), [QgsProcessing.TypeVectorAnyGeometry]))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", self.tr("Class field (integer; empty: every polygon is class 1)"),
            parentLayerParameterName="LABELS", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "CHIP_SIZE", self.tr("Chip size (pixels)"), Int, 256, minValue=8))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE_X", self.tr("Stride X (pixels; default: chip size)"), Int, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE_Y", self.tr("Stride Y (pixels; default: chip size)"), Int, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterEnum(
            "MODE", self.tr("Mode"), ["All", "Positive", "Divided"], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "BACKGROUND", self.tr("Background value (outside polygons)"), Int, 0, minValue=0, maxValue=254))
        self.addParameter(QgsProcessingParameterNumber(
            "VALIDATION_FRACTION", self.tr("Validation fraction"), Dbl, 0.2, minValue=0.0, maxValue=0.99))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_DIR", self.tr("Output folder")))
        extra = [
            QgsProcessingParameterField(
                "NAME_FIELD", self.tr("Class name field"), parentLayerParameterName="LABELS", optional=True),
            QgsProcessingParameterNumber(
                "MAX_NODATA_FRACTION", self.tr("Maximum nodata fraction of a chip"), Dbl, 1.0,
                minValue=0.0, maxValue=1.0),
            QgsProcessingParameterEnum(
                "SPLIT_METHOD", self.tr("Split method"), ["Random", "Spatial blocks"], defaultValue=0),
            QgsProcessingParameterNumber(
                "BLOCK_SIZE", self.tr("Spatial block size (pixels; default: 4 chips)"), Int,
                optional=True, minValue=1),
            QgsProcessingParameterNumber("SEED", self.tr("Random seed"), Int, 0, minValue=0),
        ]
        advanced(self, extra)
        self.addParameter(QgsProcessingParameterVectorDestination(
            "INDEX", self.tr("Chip index (footprints)"), QgsProcessing.TypeVectorPolygon,
            optional=True, createByDefault=False))
        for name, title in (("N_CHIPS", "Chips exported"), ("N_TRAIN", "Training chips"),
                            ("N_VALIDATION", "Validation chips")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(title)))

    def processAlgorithm(self, parameters, context, feedback):
        def optional_int(name: str) -> int | None:
            value = parameters.get(name)
            return None if value in (None, "") else self.parameterAsInt(parameters, name, context)

        index = self.parameterAsOutputLayer(parameters, "INDEX", context) if parameters.get("INDEX") else None
        if index is not None and not index.lower().endswith(".gpkg"):
            raise QgsProcessingException("INDEX: the chip index is written as a GeoPackage; "
                                         "give a file name ending in .gpkg.")
        params = ExportParams(
            input_path=raster_path(self, parameters, "INPUT", context),
            labels_path=vector_uri(self, parameters, "LABELS", context, feedback),
            output_dir=self.parameterAsString(parameters, "OUTPUT_DIR", context),
            class_field=self.parameterAsString(parameters, "CLASS_FIELD", context) or None,
            name_field=self.parameterAsString(parameters, "NAME_FIELD", context) or None,
            chip_size=self.parameterAsInt(parameters, "CHIP_SIZE", context),
            stride_x=optional_int("STRIDE_X"),
            stride_y=optional_int("STRIDE_Y"),
            mode=MODES[self.parameterAsEnum(parameters, "MODE", context)],
            background=self.parameterAsInt(parameters, "BACKGROUND", context),
            max_nodata_fraction=self.parameterAsDouble(parameters, "MAX_NODATA_FRACTION", context),
            validation_fraction=self.parameterAsDouble(parameters, "VALIDATION_FRACTION", context),
            split_method=SPLIT_METHODS[self.parameterAsEnum(parameters, "SPLIT_METHOD", context)],
            block_size=optional_int("BLOCK_SIZE"),
            seed=self.parameterAsInt(parameters, "SEED", context),
            index_path=index,
        )
        result = self.run_core(export_chips, params, feedback)
        feedback.pushInfo(
            f"Exported {result.n_chips} of {result.n_grid} grid chips ({result.n_train} train, "
            f"{result.n_validation} validation) to {result.output_dir} in {result.seconds:.1f} s.")
        out = {"OUTPUT_DIR": result.output_dir, "N_CHIPS": result.n_chips, "N_TRAIN": result.n_train,
               "N_VALIDATION": result.n_validation}
        if result.index_path:
            out["INDEX"] = result.index_path
        return out
