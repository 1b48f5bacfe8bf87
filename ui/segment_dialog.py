"""The "Segment raster" dialog: raster layer + GeoSeg model → core.predict.SegmentParams → segment() in a QgsTask.

Thin over core on purpose: tiling, inference and the output format live in core.predict so that this
dialog, the Processing algorithm and the CLI agree. The dialog shows the model card, warns when the
raster differs from the training data, checks the inputs cheaply, and adds the styled class raster
to the map. core.predict is imported inside the methods: the plugin must load without numpy-heavy
engines, torch or onnxruntime.
"""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QTextBrowser, QVBoxLayout, QWidget

from ..adapter.layers import raster_source
from ..adapter.style import apply_class_style, class_layer_name, probabilities_layer_name, style_probabilities
from ..core import deps
from ..core.errors import GeoSegError
from ..core.options import ARCHITECTURE_LABELS, ARCHITECTURES
from ..core.params import SegmentParams
from .base_dialog import ERROR_STYLE, GeoSegDialog
from .settings import apply_defaults
from .tasks import CoreTask

if TYPE_CHECKING:
    from ..core.card import ModelCard

SETTINGS_PREFIX = "geoseg/segment/"
WARNING_STYLE = "color: #b35900;"


def architecture_label(name: str | None) -> str:
    return ARCHITECTURE_LABELS[ARCHITECTURES.index(name)] if name in ARCHITECTURES else str(name or "unknown")


def card_html(card: ModelCard) -> str:
    """The model card as a short HTML summary: architecture, classes with colour swatches, inputs, tiling."""
    e = html.escape
    rows = "".join(
        f'<tr><td bgcolor="{e(c.color)}" width="18">&nbsp;</td><td>{e(str(c.name))}</td>'
        f'<td align="right">{c.value}</td></tr>'
        for c in card.classes
    )
    pixel = card.pixel_size
    crs = card.crs
    rec = card.recommended
    miou = card.metrics.val_miou if card.metrics else None
    facts = [
        ("Bands", ", ".join(str(b) for b in card.bands) + f" ({card.in_channels} input channels)"),
        ("Chip size", f"{card.chip_size} px"),
        ("Training pixel size", f"{pixel[0]:g} × {pixel[1]:g}" if pixel else "unknown"),
        ("Training CRS", (crs and crs.authid) or ("custom" if crs and crs.wkt else "unknown")),
        ("Recommended tiling", f"stride {rec.stride} px, crop {rec.crop} px" if rec else "none"),
        ("Validation mIoU", f"{miou:.4f}" if isinstance(miou, int | float) else "unknown"),
    ]
    facts_html = "".join(f"<tr><td><i>{e(k)}</i></td><td>{e(v)}</td></tr>" for k, v in facts)
    return (
        f"<b>{e(architecture_label(card.architecture))}</b> — {card.num_classes} classes"
        f'<table cellspacing="2">{rows}</table><table cellspacing="2">{facts_html}</table>'
    )


def read_card(path: str) -> ModelCard:
    """core.predict.read_model_card, with any unexpected failure turned into a GeoSegError for the form."""
    from ..core.predict import read_model_card

    try:
        return read_model_card(path)
    except GeoSegError:
        raise
    except Exception as e:  # noqa: BLE001  (a foreign file must not break the dialog)
        raise GeoSegError(f"Model: cannot read a GeoSeg model card from {path} ({e}).") from None


class SegmentDialog(GeoSegDialog):
    """Non-modal dialog; segmentation runs in the task manager so QGIS stays responsive."""

    settings_prefix = SETTINGS_PREFIX
    params_class = SegmentParams

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(iface, "GeoSeg — Segment raster", "GeoSegSegmentDialog", parent)
        self.card: ModelCard | None = None  # card of the chosen model, None when none or unreadable
        self.card_error: str | None = None
        self.last_layer: QgsRasterLayer | None = None  # class layer added by the last run
        self.last_probabilities_layer: QgsRasterLayer | None = None
        self._input_name = ""
        self._setup()

    # ---------------------------------------------------------------- layout
    def _build(self, root: QVBoxLayout) -> None:
        self._help_label(
            root,
            "Classifies every pixel of a raster with a GeoSeg model (.onnx or .pt), tile by tile "
            "with overlap, into a class raster (GeoTIFF, one value per class, 255 = nodata) styled "
            "with the model's classes.",
        )
        columns = QHBoxLayout()
        root.addLayout(columns)
        left, right = QVBoxLayout(), QVBoxLayout()
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)
        inputs = self._group(left, "Inputs")
        self.inputLayer = self._add(
            inputs,
            "Input raster",
            QgsMapLayerComboBox(self),
            "inputLayer",
            "Raster to segment (a GDAL file layer); it needs the bands the model was " "trained on.",
        )
        self.inputLayer.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.modelFile = self._add(
            inputs,
            "Model",
            QgsFileWidget(self),
            "modelFile",
            "GeoSeg model: the .onnx or .pt written by Train model (its card travels " "inside).",
            "model_file",
        )
        self.modelFile.setStorageMode(QgsFileWidget.GetFile)
        self.modelFile.setFilter("GeoSeg models (*.onnx *.pt)")
        self.modelFile.setDialogTitle("GeoSeg model")
        self.fields.update(input_path=self.inputLayer, model_path=self.modelFile)
        # below the form, in the column itself: a form row would not grow with the wrapped warnings
        self.cardView = self._below(
            left,
            QTextBrowser(self),
            "cardView",
            "The chosen model's card: classes, input " "bands, chip size, training data and validation mIoU.",
        )
        self.cardView.setMinimumSize(340, 200)
        self.warningLabel = self._below(
            left,
            QLabel(self),
            "warningLabel",
            "Where the raster differs from the " "model's training data (pixel size, CRS, bands); results may suffer.",
        )
        self.warningLabel.setWordWrap(True)
        self.warningLabel.setStyleSheet(WARNING_STYLE)

        tiling = self._group(right, "Tiling and inference", QgsCollapsibleGroupBox)
        # widgets, labels, tooltips, ranges, defaults and choices from core/params.py (SegmentParams)
        self.chipSize = self._field(tiling, "chip_size", "chipSize", "chip_size")
        self.strideX = self._field(tiling, "stride_x", "strideX", "stride_x")
        self.strideY = self._field(tiling, "stride_y", "strideY", "stride_y")
        self.crop = self._field(tiling, "crop", "crop", "crop")
        row = QHBoxLayout()
        self.recommendedButton = self._button(
            row,
            "Use recommended tiling",
            "recommendedButton",
            "Fill chip size, strides and crop with the model's recommendation "
            "(crop ≥ its receptive-field radius: seam-free).",
        )
        row.addStretch(1)
        tiling.addRow(row)
        self.recommendedButton.clicked.connect(self.use_recommended_tiling)
        self.batchSize = self._field(tiling, "batch_size", "batchSize", "batch_size")
        # auto batch size (0) fills this budget (0: $GEOSEG_MEMORY_BUDGET_MB, else a share of the free memory)
        self.memoryBudget = self._field(tiling, "memory_budget_mb", "memoryBudget", "memory_budget_mb")
        self.backend = self._field(tiling, "backend", "backend", "backend")
        self.device = self._field(tiling, "device", "device", "device")
        apply_defaults(self.device, self.batchSize)  # GeoSeg ▸ Settings; remembered values override them
        self.deviceInfo = self._add(
            tiling,
            None,
            QLabel(self),
            "deviceInfo",
            "The device torch would use and the " "onnxruntime execution providers available on this machine.",
        )
        self.deviceInfo.setWordWrap(True)
        self.deviceInfo.setText("\n".join(deps.summary_lines(deps.device_summary())))

        output = self._group(right, "Output")
        self.outputFile = self._add(
            output,
            "Class raster (.tif)",
            QgsFileWidget(self),
            "outputFile",
            "GeoTIFF to write: Byte, one class value per pixel, 255 = nodata, colour "
            "table. GeoSeg never overwrites.",
            "output_file",
        )
        self.probabilitiesFile = self._add(
            output,
            "Probabilities (.tif, optional)",
            QgsFileWidget(self),
            "probabilitiesFile",
            "Optional Float32 GeoTIFF with one softmax " "probability band per class; empty: not written.",
            "probabilities_file",
        )
        for widget, title in ((self.outputFile, "Class raster"), (self.probabilitiesFile, "Probabilities")):
            widget.setStorageMode(QgsFileWidget.SaveFile)
            widget.setFilter("GeoTIFF (*.tif)")
            widget.setDialogTitle(title)
        self.fields.update(output_path=self.outputFile, probabilities_path=self.probabilitiesFile)
        self.addToMap = self._add(
            output,
            None,
            QCheckBox("Add the result to the map", self),
            "addToMap",
            "Add the class raster, styled with the model's colours and names (and the "
            "probabilities), to the project.",
            "add_to_map",
        )
        self.addToMap.setChecked(True)

        right.addStretch(1)
        self._add_run_controls(
            root,
            "segmentation",
            "Problems with the inputs and the outcome of the last run.",
            "Segment the raster in the background.",
            "Stop the running segmentation; the unfinished output is removed.",
        )
        self.modelFile.fileChanged.connect(self._model_changed)
        self.inputLayer.layerChanged.connect(self._update_warnings)
        self._model_changed(self.modelFile.filePath())

    def _below(self, column: QVBoxLayout, widget: Any, name: str, tip: str) -> Any:
        widget.setObjectName(name)
        widget.setToolTip(tip)
        column.addWidget(widget)
        return widget

    # ---------------------------------------------------------------- card and warnings
    def set_input_layer(self, layer: QgsRasterLayer | None) -> None:
        """Preselect the raster to segment (the layer tree's "Segment layer…" action)."""
        self.inputLayer.setLayer(layer)

    def _model_changed(self, path: str) -> None:
        """Read the chosen model's card (without running the model) and show it, or why it cannot be used."""
        self.card, self.card_error = None, None
        path = (path or "").strip()
        if not path:
            self.cardView.setHtml("<i>Choose a model to see its classes and training data.</i>")
        else:
            try:
                self.card = read_card(path)
                self.cardView.setHtml(card_html(self.card))
            except GeoSegError as e:
                self.card_error = str(e)
                self.cardView.setHtml(f'<span style="{ERROR_STYLE}">{html.escape(self.card_error)}</span>')
        self.recommendedButton.setEnabled(bool(self.card and self.card.recommended))
        self._update_warnings()

    def _update_warnings(self, *_: Any) -> None:
        """The raster versus the training data, whenever the model or the layer changes."""
        warnings: list[str] = []
        layer = self.inputLayer.currentLayer()
        if self.card is not None and layer is not None:
            from ..core.predict import compatibility_warnings

            try:
                warnings = compatibility_warnings(self.card, raster_source(layer))
            except Exception as e:  # noqa: BLE001  (only a hint: an unreadable raster must not break the form)
                warnings = [str(e)]
        self.warningLabel.setText("\n".join(warnings))

    def use_recommended_tiling(self) -> None:
        """Chip size, strides and crop from the card's `recommended` (crop covers the receptive field)."""
        rec = self.card.recommended if self.card else None
        if not rec:
            return
        self.chipSize.setValue(self.card.chip_size)
        self.strideX.setValue(rec.stride)
        self.strideY.setValue(rec.stride)
        self.crop.setValue(rec.crop)

    # ---------------------------------------------------------------- params
    def params(self) -> SegmentParams:
        """Build core's SegmentParams from the widgets; GeoSegError says what is missing (GUI-only checks:
        a layer, a model and an output must be chosen; every rule about the values is core's)."""
        input_path = self._about("INPUT", raster_source, self.inputLayer.currentLayer())
        model = self.modelFile.filePath().strip()
        if not model:
            raise GeoSegError("Model: choose a GeoSeg model (.onnx or .pt) written by Train model.", param="MODEL")
        output = self.outputFile.filePath().strip()
        if not output:
            raise GeoSegError("Class raster: choose the GeoTIFF (.tif) to write.", param="OUTPUT")
        return SegmentParams(
            input_path=input_path,
            model_path=model,
            output_path=output,
            probabilities_path=self.probabilitiesFile.filePath().strip() or None,
            **self.field_values(),
        )

    def _checked_params(self) -> SegmentParams:
        """Core's preflight: values, outputs (.tif, new, distinct), card, band count and tiling, before any
        work starts."""
        from ..core.predict import preflight

        p = self.params()
        preflight(p)
        return p

    # ---------------------------------------------------------------- running
    def _create_task(self, p: Any) -> CoreTask:
        from ..core.predict import segment

        layer = self.inputLayer.currentLayer()
        self._input_name = layer.name() if layer is not None else os.path.basename(p.input_path)
        return CoreTask(
            f"GeoSeg: segment {self._input_name} → {os.path.basename(p.output_path)}",
            segment,
            p,
            self._on_success,
            self._on_error,
        )

    def _success_text(self, result: Any) -> str:
        text = (
            f"Segmented {self._input_name} with {architecture_label(result.card.architecture)}: "
            f"{result.output_path} ({result.tiles} tiles, {result.seconds:.1f} s, "
            f"{result.backend}/{result.provider}, batch size {result.final_batch_size})"
        )
        if result.final_batch_size < result.batch_size:
            text += (
                f". Memory ran out at batch size {result.batch_size}; the batch was halved and the " f"tiles retried"
            )
        if result.warnings:
            text += ". Warnings: " + " ".join(result.warnings)
        return text

    def _show_result(self, result: Any) -> None:
        """Add the probabilities (if written) and then the styled class raster on top of them."""
        self.last_layer = self.last_probabilities_layer = None
        if sip.isdeleted(self) or not self.addToMap.isChecked():
            return
        project = QgsProject.instance()
        if result.probabilities_path:
            layer = QgsRasterLayer(
                result.probabilities_path, probabilities_layer_name(result.probabilities_path, self._input_name), "gdal"
            )
            if layer.isValid():
                style_probabilities(layer)
                self.last_probabilities_layer = project.addMapLayer(layer)
        layer = QgsRasterLayer(result.output_path, class_layer_name(result.output_path, self._input_name), "gdal")
        if layer.isValid():
            apply_class_style(layer, [c.to_dict() for c in result.card.classes])
            self.last_layer = project.addMapLayer(layer)
