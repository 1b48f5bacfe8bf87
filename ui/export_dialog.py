"""The "Export training chips" dialog: widgets → core.chips.ExportParams → export_chips in a QgsTask.

Thin over core on purpose: every rule about chips lives in core.chips so that this dialog, the
Processing algorithm and the CLI agree. The dialog only turns QGIS layers into paths GDAL/OGR
can open, remembers the last values and reports the outcome.
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsFieldProxyModel, QgsMapLayerProxyModel, QgsProject, QgsVectorLayer
from qgis.gui import QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from ..adapter.layers import raster_source, vector_source
from ..core.chips import ExportParams, ExportResult, export_chips, validate
from ..core.errors import GeoSegError
from ..core.params import spec
from .base_dialog import GeoSegDialog
from .tasks import CoreTask

SETTINGS_PREFIX = "geoseg/export/"
INDEX_SUFFIX = "_index.gpkg"


def index_path_for(output_dir: str) -> str:
    """The chip index is a sibling of the output folder (core wants that folder new or empty)."""
    return os.path.normpath(output_dir) + INDEX_SUFFIX


class ExportChipsDialog(GeoSegDialog):
    """Non-modal dialog; the export runs in the task manager so QGIS stays responsive."""

    settings_prefix = SETTINGS_PREFIX
    params_class = ExportParams
    last_result: ExportResult | None

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(iface, "GeoSeg — Export training chips", "GeoSegExportChipsDialog", parent)
        self._setup()

    # ---------------------------------------------------------------- layout
    def _build(self, root: QVBoxLayout) -> None:
        self._help_label(
            root,
            "Cuts a raster and label polygons into image/mask chips (GeoTIFF) for training a "
            "segmentation model, with a train/validation split, chips.csv and dataset.json.",
        )

        inputs = self._group(root, "Inputs")
        self.inputLayer = self._add(
            inputs,
            "Input raster",
            QgsMapLayerComboBox(self),
            "inputLayer",
            "Raster to cut into image chips (a GDAL file layer, e.g. a GeoTIFF).",
        )
        self.inputLayer.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.labelsLayer = self._add(
            inputs,
            "Label polygons",
            QgsMapLayerComboBox(self),
            "labelsLayer",
            "Polygons burnt into the mask chips; reprojected to the raster CRS.",
        )
        self.labelsLayer.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.labelsLayer.setAllowEmptyLayer(True)
        self.classField = self._add(
            inputs,
            "Class field",
            QgsFieldComboBox(self),
            "classField",
            "Integer field with the class value (0-254) of each polygon; empty: every polygon is class 1.",
        )
        self.classField.setFilters(QgsFieldProxyModel.Int | QgsFieldProxyModel.LongLong)
        self.classField.setAllowEmptyFieldName(True)
        self.nameField = self._add(
            inputs,
            "Class name field",
            QgsFieldComboBox(self),
            "nameField",
            "Optional text field naming each class, written to dataset.json.",
        )
        self.nameField.setFilters(QgsFieldProxyModel.String)
        self.nameField.setAllowEmptyFieldName(True)
        self.labelRaster = self._layer_choice(inputs, "label_raster", "labelRaster", QgsMapLayerProxyModel.RasterLayer)
        self.maskLayer = self._layer_choice(inputs, "mask_path", "maskLayer", QgsMapLayerProxyModel.PolygonLayer)
        self.fields.update(
            input_path=self.inputLayer,
            labels_path=self.labelsLayer,
            class_field=self.classField,
            name_field=self.nameField,
            label_raster=self.labelRaster,
            mask_path=self.maskLayer,
        )
        self.labelsLayer.layerChanged.connect(self._labels_changed)
        self._labels_changed(self.labelsLayer.currentLayer())

        # layers are per project: only the other values are remembered (setting=...); the widgets, labels,
        # tooltips, ranges, defaults and choices come from core/params.py (ExportParams)
        chips = self._group(root, "Chips")
        self.rest_form = chips  # parameters added to ExportParams without a place of their own
        self.chipSize = self._field(chips, "chip_size", "chipSize", "chip_size")
        self.strideX = self._field(chips, "stride_x", "strideX", "stride_x")
        self.strideY = self._field(chips, "stride_y", "strideY", "stride_y")
        self.mode = self._field(chips, "mode", "mode", "mode")
        self.background = self._field(chips, "background", "background", "background")
        self.maxNodata = self._field(chips, "max_nodata_fraction", "maxNodata", "max_nodata_fraction")

        split = self._group(root, "Train / validation split")
        self.validationFraction = self._field(split, "validation_fraction", "validationFraction", "validation_fraction")
        self.splitMethod = self._field(split, "split_method", "splitMethod", "split_method")
        self.splitMethod.currentIndexChanged.connect(self._update_block_size)  # restoring the split fires it too
        self.blockSize = self._field(split, "block_size", "blockSize", "block_size")
        self._update_block_size()
        self.seed = self._field(split, "seed", "seed", "seed")

        output = self._group(root, "Output")
        self.outputDir = self._add(
            output,
            "Output folder",
            QgsFileWidget(self),
            "outputDir",
            "New or empty folder for images/, masks/, chips.csv and dataset.json; " "GeoSeg never overwrites.",
            "output_dir",
        )
        self.outputDir.setStorageMode(QgsFileWidget.GetDirectory)
        self.outputDir.setDialogTitle("Output folder for the chips")
        self.appendCheck = self._field(output, "append", "appendCheck", "append")
        self.indexCheck = self._add(
            output,
            None,
            QCheckBox("Write chip index (GeoPackage) and add it to the map", self),
            "indexCheck",
            f"Writes the chip footprints to <output folder>{INDEX_SUFFIX}, " "next to the output folder.",
            "write_index",
        )
        self.indexCheck.setChecked(True)
        self.fields.update(output_dir=self.outputDir, index_path=self.indexCheck)  # the index: beside the folder

        self._add_run_controls(
            root,
            "export",
            "Problems with the inputs and the outcome of the last run.",
            "Export the chips in the background.",
            "Stop the running export; nothing is left behind.",
        )

    def _layer_choice(self, form: Any, field_name: str, name: str, filters: Any) -> QgsMapLayerComboBox:
        """An optional layer picker labelled and explained as core's schema says (empty: not used)."""
        s = spec(ExportParams, field_name)
        combo = self._add(form, s.label, QgsMapLayerComboBox(self), name, s.meta.help)
        combo.setFilters(filters)
        combo.setAllowEmptyLayer(True)
        combo.setLayer(None)
        return combo

    def _labels_changed(self, layer: Any) -> None:
        self.classField.setLayer(layer)
        self.nameField.setLayer(layer)

    def _update_block_size(self, *_: Any) -> None:
        self.blockSize.setEnabled(self.field_value("split_method") == "blocks")

    # ---------------------------------------------------------------- params
    def params(self) -> ExportParams:
        """Build core's parameters from the widgets; GeoSegError says what is missing (GUI-only checks:
        a layer or folder must be chosen; every rule about the values is core's `validate`)."""
        input_path = self._about("INPUT", raster_source, self.inputLayer.currentLayer())
        labels, label_raster = self.labelsLayer.currentLayer(), self.labelRaster.currentLayer()
        if (labels is None) == (label_raster is None):
            raise GeoSegError(
                "Label polygons or label raster: choose one" + (", not both." if labels else "."), param="LABELS"
            )
        output_dir = self.outputDir.filePath().strip()
        if not output_dir:
            raise GeoSegError("Output folder: choose a new or empty folder for the chips.", param="OUTPUT_DIR")
        mask = self.maskLayer.currentLayer()
        return self.params_class(
            input_path=input_path,
            labels_path=self._about("LABELS", vector_source, labels, self._temp_dirs) if labels else None,
            label_raster=self._about("LABEL_RASTER", raster_source, label_raster) if label_raster else None,
            mask_path=self._about("MASK", vector_source, mask, self._temp_dirs) if mask else None,
            output_dir=output_dir,
            class_field=self.classField.currentField() or None,
            name_field=self.nameField.currentField() or None,
            index_path=index_path_for(output_dir) if self.indexCheck.isChecked() else None,
            **self.field_values(),
        )

    def _checked_params(self) -> ExportParams:
        p = self.params()
        validate(p)  # core's checks: ranges, names, a new or empty output folder, a new index file
        return p

    # ---------------------------------------------------------------- running
    def _create_task(self, p: ExportParams) -> CoreTask:
        return CoreTask(
            f"GeoSeg: export chips to {os.path.basename(os.path.normpath(p.output_dir))}",
            export_chips,
            p,
            self._on_success,
            self._on_error,
        )

    def _success_text(self, result: ExportResult) -> str:
        return (
            f"Exported {result.n_chips} chips ({result.n_train} train, {result.n_validation} "
            f"validation) to {result.output_dir}"
        )

    def _show_result(self, result: ExportResult) -> None:
        """Add the chip index to the map, so the split can be inspected over the raster."""
        if result.index_path:
            name = f"GeoSeg chips — {os.path.basename(result.output_dir)}"
            layer = QgsVectorLayer(result.index_path, name, "ogr")
            if layer.isValid():
                QgsProject.instance().addMapLayer(layer)
