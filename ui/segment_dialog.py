"""The "Segment raster" dialog: raster layer + GeoSeg model → core.predict.SegmentParams → segment() in a QgsTask.

Thin over core on purpose: tiling, inference and the output format live in core.predict so that this
dialog, the Processing algorithm and the CLI agree. The dialog shows the model card, warns when the
raster differs from the training data, checks the inputs cheaply, and adds the styled class raster
to the map. core.predict is imported inside the methods: the plugin must load without numpy-heavy
engines, torch or onnxruntime.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qgis.core import (
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEventLoop, QObject, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QTextBrowser, QVBoxLayout, QWidget

from ..adapter.layers import COPY_PREFIX, LayerCopy, copied_then, is_web, layer_source, raster_source
from ..adapter.style import (
    apply_class_style,
    apply_vector_class_style,
    class_layer_name,
    polygons_layer_name,
    probabilities_layer_name,
    style_probabilities,
)
from ..core import deps
from ..core.errors import GeoSegError
from ..core.options import ARCHITECTURE_LABELS, ARCHITECTURES
from ..core.params import SegmentParams, spec
from .base_dialog import ERROR_STYLE, GeoSegDialog
from .settings import apply_defaults
from .tasks import CoreTask

if TYPE_CHECKING:
    from ..core.card import ModelCard
    from ..core.foreign import OpenedModel

SETTINGS_PREFIX = "geoseg/segment/"
WARNING_STYLE = "color: #b35900;"
MEASURING_TEXT = "Measuring the model's receptive field…"  # the tiling line while a new model is probed
WAITING_TEXT = "Run waits for the model's measurement to finish…"  # Run pressed meanwhile


def architecture_label(name: str | None) -> str:
    return ARCHITECTURE_LABELS[ARCHITECTURES.index(name)] if name in ARCHITECTURES else str(name or "unknown")


def card_html(card: ModelCard, opened: OpenedModel | None = None) -> str:
    """The model card as a short HTML summary: architecture, classes with colour swatches, inputs, tiling;
    for a model without a GeoSeg card (`opened`, core.foreign) also where each value came from."""
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
    title = e(architecture_label(card.architecture)) if card.architecture or not opened else e(opened.source)
    text = (
        f"<b>{title}</b> — {card.num_classes} classes"
        f'<table cellspacing="2">{rows}</table><table cellspacing="2">{facts_html}</table>'
    )
    if opened is not None and opened.foreign:
        text += provenance_html(opened)
    return text


def provenance_html(opened: OpenedModel) -> str:
    """Where each card value of a model without a GeoSeg card came from, and how it is run."""
    e = html.escape
    rows = "".join(f"<tr><td><i>{e(k)}</i></td><td>{e(v)}</td></tr>" for k, v in opened.provenance.items())
    io = opened.io
    run = [
        f"tiles fixed at {io.fixed_size} px" if io.fixed_size else "any tile size",
        f"batch fixed at {io.fixed_batch}" if io.fixed_batch else "any batch size",
        "sigmoid output: class 1 where p ≥ 0.5"
        if io.single
        else ("softmax probabilities: arg-max" if io.probabilities else "logits: arg-max"),
    ]
    if io.outputs > 1:
        run.append(f"output {io.output} of {io.outputs}")
    notes = "".join(f"<br>{e(n)}" for n in opened.notes)
    return f"<p><b>Card from {e(opened.source)}</b></p><table>{rows}</table><p>{e('; '.join(run))}{notes}</p>"


def read_card(path: str, card_path: str | None = None, output: int = 0) -> OpenedModel:
    """core.backends.read_model (the card, its provenance and how the model runs), with any unexpected
    failure turned into a GeoSegError for the form."""
    from ..core.backends import read_model

    try:
        return read_model(path, card_path or None, output)
    except GeoSegError:
        raise
    except Exception as e:  # noqa: BLE001  (a foreign file must not break the dialog)
        raise GeoSegError(f"Model: cannot read a GeoSeg model card from {path} ({e}).") from None


# ---------------------------------------------------------------- tiling line off the UI thread (issue 18)
def tiling_text(p: SegmentParams) -> str:
    """core.tiling.describe of core.predict.tiling_plan, or "" when the inputs do not allow a run yet (only a
    hint: the run's own checks report what is wrong). Slow the first time a model file is seen (an impulse
    probe), so the dialog calls it on the planner thread, never on the UI thread."""
    from ..core.predict import tiling_plan
    from ..core.tiling import describe

    try:
        return describe(tiling_plan(p))
    except Exception:  # noqa: BLE001  (a hint must never break the form)
        return ""


class PlanRelay(QObject):
    """Carries a tiling text from the planner thread to the dialog (a queued signal: the slot runs on the UI
    thread). `latest` is the generation of the dialog's newest request: older results are dropped."""

    done = pyqtSignal(int, str)

    def __init__(self) -> None:
        super().__init__()
        self.latest = 0


# One plain Python worker thread for every dialog: probes never run side by side, a burst of changes is
# served in order, and Python joins the thread at exit (a QThread destroyed while running aborts QGIS).
PLANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-tiling")


def plan_job(relay_ref: weakref.ref, generation: int, p: SegmentParams) -> None:
    """The planner thread's work for one request; skipped when a newer request is already queued. The relay
    is held weakly: a dialog gone meanwhile is simply not told."""
    relay = relay_ref()
    if relay is None or relay.latest != generation:
        return
    del relay  # not kept alive by the probe
    text = tiling_text(p)
    relay = relay_ref()
    if relay is not None:
        try:
            relay.done.emit(generation, text)
        except RuntimeError:  # its C++ half is gone with the dialog
            pass


class SegmentDialog(GeoSegDialog):
    """Non-modal dialog; segmentation runs in the task manager so QGIS stays responsive."""

    settings_prefix = SETTINGS_PREFIX
    params_class = SegmentParams

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(iface, "GeoSeg — Segment raster", "GeoSegSegmentDialog", parent)
        self.card: ModelCard | None = None  # card of the chosen model, None when none or unreadable
        self.opened: OpenedModel | None = None  # the card with its provenance and how the model runs
        self.card_error: str | None = None
        self.last_layer: QgsRasterLayer | None = None  # class layer added by the last run
        self.last_probabilities_layer: QgsRasterLayer | None = None
        self.last_vector_layer: QgsVectorLayer | None = None
        self._input_name = ""
        self._copy: LayerCopy | None = None  # a layer's copy prepared by params(), written by the next task
        self._plan_relay = PlanRelay()  # the tiling line's results from the planner thread
        self._plan_relay.done.connect(self._show_tiling_info)
        self._plan_shown = 0  # generation of the request whose text the tiling line shows
        self._plan_model: tuple[str, str | None, int] | None = None  # the model of the last request
        self._waiting = False  # Run pressed while the planner measures the model
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
        self.cardFile = self._add(
            inputs,
            "Model card (JSON)",
            QgsFileWidget(self),
            "cardFile",
            "Only for an ONNX model without a GeoSeg card or Deepness metadata: a JSON file with the card "
            "fields (classes, bands, in_channels, chip_size, normalization); it replaces the model's own.",
            "card_file",
        )
        self.cardFile.setStorageMode(QgsFileWidget.GetFile)
        self.cardFile.setFilter("JSON (*.json)")
        self.cardFile.setDialogTitle("Model card")
        self.cardEditorButton = self._add(  # issue 14: write a card for a model that has none
            inputs,
            None,
            QPushButton("Write a model card…", self),
            "cardEditorButton",
            "For an ONNX model without a GeoSeg card or Deepness metadata: enter its classes, bands, "
            "normalisation and chip size; the card is saved as JSON and chosen as the model card.",
        )
        self.cardEditor: Any = None  # the open ui.card_editor.CardEditor, if any
        self.fields.update(input_path=self.inputLayer, model_path=self.modelFile, card_path=self.cardFile)
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
        self.rest_form = tiling  # parameters added to SegmentParams without a place of their own
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
        self.outputIndex = self._field(tiling, "output_index", "outputIndex", "output_index")
        self.modelThreshold = self._field(tiling, "model_threshold", "modelThreshold", "model_threshold")
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
        self._add_tiling_info(tiling)

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
        self.vectorFile = self._add(  # issue 17: OUTPUT_VECTOR
            output,
            "Polygons (.gpkg, optional)",
            QgsFileWidget(self),
            "vectorFile",
            "Optional GeoPackage: one polygon per connected region of the class map with its class value, "
            "name and area; empty: not written.",
            "vector_file",
        )
        for widget, title in (
            (self.outputFile, "Class raster"),
            (self.probabilitiesFile, "Probabilities"),
            (self.vectorFile, "Polygons"),
        ):
            widget.setStorageMode(QgsFileWidget.SaveFile)
            widget.setFilter("GeoPackage (*.gpkg)" if widget is self.vectorFile else "GeoTIFF (*.tif)")
            widget.setDialogTitle(title)
        self.fields.update(
            output_path=self.outputFile, probabilities_path=self.probabilitiesFile, vector_path=self.vectorFile
        )
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
        self.cardFile.fileChanged.connect(lambda *_: self._model_changed(self.modelFile.filePath()))
        self.cardEditorButton.clicked.connect(self.open_card_editor)
        self.outputIndex.valueChanged.connect(lambda *_: self._model_changed(self.modelFile.filePath()))
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
        self.card, self.card_error, self.opened = None, None, None
        path = (path or "").strip()
        if not path:
            self.cardView.setHtml("<i>Choose a model to see its classes and training data.</i>")
        else:
            try:
                self.opened = read_card(path, self.cardFile.filePath().strip(), self.outputIndex.value())
                self.card = self.opened.card
                self.cardView.setHtml(card_html(self.card, self.opened))
            except GeoSegError as e:
                self.card_error = str(e)
                self.cardView.setHtml(f'<span style="{ERROR_STYLE}">{html.escape(self.card_error)}</span>')
        self.recommendedButton.setEnabled(bool(self.card and self.card.recommended))
        self.cardEditorButton.setEnabled(bool(path) and (self.card is None or bool(self.cardFile.filePath().strip())))
        self._update_warnings()

    def open_card_editor(self) -> Any:
        """The card editor (ui.card_editor) for the chosen model, window-modal; its saved file becomes CARD."""
        from .card_editor import CardEditor

        model = self.modelFile.filePath().strip()
        if not model:
            return None
        self.cardEditor = CardEditor(model, self)
        current = self.cardFile.filePath().strip()
        if current and os.path.isfile(current):  # edit the chosen card
            try:
                with open(current, encoding="utf-8") as f:
                    self.cardEditor.set_card(json.load(f))
            except (OSError, ValueError, TypeError, AttributeError):
                pass  # not a card the form can show: start from the model's example
        self.cardEditor.accepted.connect(lambda: self.cardFile.setFilePath(self.cardEditor.saved_path or ""))
        self.cardEditor.open()
        return self.cardEditor

    def _place_rest(self) -> None:
        super()._place_rest()
        for name in ("resolution", "pixel_size"):  # the grid plan follows them (issue 17)
            w = self.fields.get(name)
            if w is not None:
                (w.currentIndexChanged if name == "resolution" else w.valueChanged).connect(self._update_warnings)

    def _update_warnings(self, *_: Any) -> None:
        """The raster versus the training data, whenever the model, the layer or RESOLUTION changes: the
        band check, and core's grid plan when the model reads the raster on another grid (core.resample)."""
        warnings: list[str] = []
        layer = self.inputLayer.currentLayer()
        if self.card is not None and layer is not None and layer.providerType() == "gdal":
            from ..core.predict import compatibility_warnings
            from ..core.resample import plan_for

            resolution = (
                spec(SegmentParams, "resolution").values[self.fields["resolution"].currentIndex()]
                if "resolution" in self.fields
                else "auto"
            )
            size = self.fields["pixel_size"].value() if "pixel_size" in self.fields else 0.0
            try:
                source = raster_source(layer)
                warnings = compatibility_warnings(self.card, source, grid=resolution == "raster")
                plan = plan_for(self.card, source, resolution, size)
                if plan.warp:
                    warnings.append(plan.message[0].upper() + plan.message[1:])
            except Exception as e:  # noqa: BLE001  (only a hint: an unreadable raster must not break the form)
                warnings.append(str(e))
        self.warningLabel.setText("\n".join(warnings))
        self._update_tiling_info()

    # ---------------------------------------------------------------- tiling message (issue 18)
    def _add_tiling_info(self, form: Any) -> None:
        """The line saying which tiling a run would use and how often it computes each pixel."""
        self.tilingInfo = self._add(
            form,
            None,
            QLabel(self),
            "tilingInfo",
            "The tiling a run would use (a local model gets large tiles with a crop just above its receptive "
            "field) and how many times each pixel is computed, against the old default stride of half a chip.",
        )
        self.tilingInfo.setWordWrap(True)
        for name in ("chip_size", "stride_x", "stride_y", "crop", "batch_size", "memory_budget_mb"):
            self.fields[name].valueChanged.connect(self._update_tiling_info)
        self.fields["device"].currentIndexChanged.connect(self._update_tiling_info)

    def _update_tiling_info(self, *_: Any) -> None:
        """Ask the planner thread for the tiling line of the chosen model, layer and values (tiling_text). A
        new model says it is being measured meanwhile; other changes keep the line until the answer comes."""
        if not hasattr(self, "tilingInfo"):  # a change while the form is still being built
            return
        self._plan_relay.latest += 1  # any answer still on its way is for older inputs now
        p = self._tiling_params()
        model = (p.model_path, p.card_path, p.output_index) if p is not None else None
        if p is None:
            self._plan_shown = self._plan_relay.latest
            self.tilingInfo.setText("")
        else:
            if model != self._plan_model:
                self.tilingInfo.setText(MEASURING_TEXT)
            PLANNER.submit(plan_job, weakref.ref(self._plan_relay), self._plan_relay.latest, p)
        self._plan_model = model

    def _tiling_params(self) -> SegmentParams | None:
        """The params the tiling line is about, or None when the inputs do not allow a run yet."""
        layer, model = self.inputLayer.currentLayer(), self.modelFile.filePath().strip()
        if self.card is None or layer is None or layer.providerType() != "gdal" or not model:
            return None
        try:
            return SegmentParams(
                input_path=raster_source(layer),
                model_path=model,
                output_path="",
                card_path=self.cardFile.filePath().strip() or None,
                **self.field_values(),
            )
        except Exception:  # noqa: BLE001  (only a hint: the run's own checks report what is wrong)
            return None

    def _show_tiling_info(self, generation: int, text: str) -> None:
        """The planner's answer, shown only if it is for the current inputs and the dialog still exists."""
        if sip.isdeleted(self) or generation != self._plan_relay.latest:
            return
        self._plan_shown = generation
        self.tilingInfo.setText(text)

    def run(self) -> CoreTask | None:
        """As every dialog's; but while the planner thread measures a model (its first impulse probe, seconds
        for a large one), Run first waits for it with QGIS's events flowing and Run disabled: the run's
        preflight needs that measurement, and would otherwise wait for it on the UI thread, freezing QGIS."""
        from ..core.tiling import measuring

        if self._waiting:
            return None
        if self.task is None and measuring():
            self._waiting = True
            self.runButton.setEnabled(False)
            self._show_message(WAITING_TEXT, error=False)
            try:
                loop, timer = QEventLoop(), QTimer()
                timer.timeout.connect(lambda: None if measuring() else loop.quit())
                timer.start(20)
                loop.exec_()
                timer.stop()
            finally:
                self._waiting = False
            if sip.isdeleted(self):
                return None
            self._set_running(False)
        return super().run()

    def tiling_pending(self) -> bool:
        """Whether the tiling line still waits for the planner's answer to the current inputs."""
        return self._plan_shown != self._plan_relay.latest

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
        layer = self.inputLayer.currentLayer()
        values = self.field_values()
        if layer is not None and is_web(layer) and not values.get("extent"):
            values["extent"] = self._canvas_extent()  # a web layer's own extent is the whole world
        input_path = self._about("INPUT", self._layer_source, layer, values)
        model = self.modelFile.filePath().strip()
        if not model:
            raise GeoSegError("Model: choose a GeoSeg model (.onnx or .pt) written by Train model.", param="MODEL")
        output = self.outputFile.filePath().strip()
        if not output:
            raise GeoSegError("Class raster: choose the GeoTIFF (.tif) to write.", param="OUTPUT")
        return self.params_class(
            input_path=input_path,
            model_path=model,
            output_path=output,
            probabilities_path=self.probabilitiesFile.filePath().strip() or None,
            vector_path=self.vectorFile.filePath().strip() or None,
            card_path=self.cardFile.filePath().strip() or None,
            **values,
        )

    def _canvas_extent(self) -> str | None:
        """The map canvas's extent as core's EXTENT text (with the canvas CRS)."""
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        if canvas is None or canvas.extent().isEmpty():
            return None
        r, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
        text = f"{r.xMinimum()!r},{r.xMaximum()!r},{r.yMinimum()!r},{r.yMaximum()!r}"
        return f"{text} [{crs.authid()}]" if crs.authid() else text

    def _layer_source(self, layer: QgsRasterLayer | None, values: dict[str, Any]) -> str:
        """GDAL source of the chosen layer. A layer only QGIS can read is not copied here: its copy over
        EXTENT is prepared (`self._copy`, adapter.layers) and written by the task, with progress and cancel."""
        self._copy = None
        if layer is None or layer.providerType() == "gdal":
            return raster_source(layer)
        folder = tempfile.mkdtemp(prefix=COPY_PREFIX)
        self._temp_dirs.append(folder)
        path, self._copy = layer_source(
            layer, folder, values.get("extent"), values.get("resolution", "auto"), values.get("pixel_size"), self.card
        )
        return path

    def _checked_params(self) -> SegmentParams:
        """Core's preflight: values, outputs (.tif, new, distinct), card, band count and tiling, before any
        work starts; for a layer still to be copied only what needs no raster (core.predict.check_params):
        the task's segment() checks the rest on the copy, and its error marks the field like this one."""
        from ..core.predict import check_params, preflight

        p = self.params()
        (preflight if self._copy is None else check_params)(p)
        return p

    # ---------------------------------------------------------------- running
    def _create_task(self, p: Any) -> CoreTask:
        from ..core.predict import segment

        layer = self.inputLayer.currentLayer()
        self._input_name = layer.name() if layer is not None else os.path.basename(p.input_path)
        func, self._copy = (segment if self._copy is None else copied_then(self._copy, segment)), None
        return CoreTask(
            f"GeoSeg: segment {self._input_name} → {os.path.basename(p.output_path)}",
            func,
            p,
            self._on_success,
            self._on_error,
        )

    def _on_error(self, message: str) -> None:
        """As every dialog reports a failed task, and the field of the parameter core's error names is marked,
        as preflight marks it (checks of a layer copy run in the task)."""
        param = self.task.error_param if self.task is not None else None
        super()._on_error(message)
        if not sip.isdeleted(self):
            self.mark_field(param)

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
        self._show_polygons(result)

    def _show_polygons(self, result: Any) -> None:
        """OUTPUT_VECTOR, when written, on top, styled by class like the class raster."""
        self.last_vector_layer = None
        if not getattr(result, "vector_path", None):
            return
        name = polygons_layer_name(result.vector_path, self._input_name)
        layer = QgsVectorLayer(f"{result.vector_path}|layername=regions", name, "ogr")
        if layer.isValid():
            apply_vector_class_style(layer, [c.to_dict() for c in result.card.classes])
            self.last_vector_layer = QgsProject.instance().addMapLayer(layer)
