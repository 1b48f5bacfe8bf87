"""SegmentDialog inside a real QGIS (pytest-qgis): model card, compatibility warnings, widgets →
SegmentParams → segmentation task → styled class layer; the plugin's "Segment layer…" action."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QTextBrowser
from torch import nn

from geoseg.adapter.style import apply_class_style, class_layer_name, style_probabilities
from geoseg.core.card import CARD_KEY
from geoseg.core.errors import GeoSegError
from geoseg.core.options import BACKEND_LABELS, DEVICE_LABELS
from geoseg.core.predict import SegmentParams
from geoseg.models.export import export_onnx
from geoseg.ui.base_dialog import FIELD_ERROR_STYLE
from geoseg.ui.segment_dialog import SegmentDialog
from tests.support.helpers import (
    UTM,
    fresh_settings,
    make_raster,
    open_dialog,
    run_and_wait,
    set_widgets,
    srs,
    wait_for,
)
from tests.support.segment_fixtures import CLASSES, MEAN, STD, card, setup

WIDGETS = (
    "inputLayer",
    "modelFile",
    "cardView",
    "warningLabel",
    "chipSize",
    "strideX",
    "strideY",
    "crop",
    "recommendedButton",
    "batchSize",
    "memoryBudget",
    "backend",
    "device",
    "outputFile",
    "probabilitiesFile",
    "addToMap",
    "messageLabel",
    "progress",
    "runButton",
    "cancelButton",
    "closeButton",
)


def items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def assert_refused(dlg: SegmentDialog, expected: str) -> None:
    assert dlg.validate_inputs() is None
    assert dlg.run() is None and dlg.task is None
    assert expected in dlg.messageLabel.text(), dlg.messageLabel.text()
    assert "c00000" in dlg.messageLabel.styleSheet()


def write_classes(path: str, values: np.ndarray) -> str:
    ds = gdal.GetDriverByName("GTiff").Create(path, values.shape[1], values.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 2.0, 0, 5300000.0, 0, -2.0))
    ds.SetProjection(srs(UTM).ExportToWkt())
    ds.GetRasterBand(1).WriteArray(values)
    ds.GetRasterBand(1).SetNoDataValue(255)
    ds = None
    return path


# ---------------------------------------------------------------- widgets and card
def test_constructs_with_tooltips_and_defaults(dialog):
    for name in WIDGETS:
        w = dialog.findChild(object, name)
        assert w is not None, name
        assert w.toolTip(), f"{name} has no tooltip"
    assert dialog.windowTitle() == "GeoSeg — Segment raster"
    assert dialog.modelFile.storageMode() == QgsFileWidget.GetFile
    assert dialog.modelFile.filter() == "GeoSeg models (*.onnx *.pt)"
    for w in (dialog.outputFile, dialog.probabilitiesFile):
        assert w.storageMode() == QgsFileWidget.SaveFile and "*.tif" in w.filter()
    assert isinstance(dialog.cardView, QTextBrowser) and dialog.cardView.isReadOnly()
    assert items(dialog.backend) == list(BACKEND_LABELS) == ["Auto", "onnxruntime", "torch"]
    assert items(dialog.device) == list(DEVICE_LABELS)
    assert (dialog.chipSize.value(), dialog.strideX.value(), dialog.strideY.value()) == (0, 0, 0)
    assert dialog.crop.value() == -1 and dialog.batchSize.value() == 8
    assert dialog.memoryBudget.value() == 0 and dialog.memoryBudget.text() == "none"
    assert dialog.chipSize.text() == "automatic" and dialog.crop.text() == "automatic"
    assert dialog.addToMap.isChecked()
    assert dialog.card is None and not dialog.recommendedButton.isEnabled()
    assert dialog.warningLabel.text() == ""
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_card_view_shows_the_model(dialog, model, layers):
    dialog.set_input_layer(layers["match"])
    dialog.modelFile.setFilePath(model)
    assert dialog.card is not None and dialog.card_error is None
    text = dialog.cardView.toPlainText()
    for expected in (
        "custom",
        "background",
        "water",
        "forest",
        "32 px",
        "EPSG:32633",
        "2 × 2",
        "stride 24 px, crop 4 px",
        "0.8123",
        "1, 2, 3",
    ):
        assert expected in text, expected
    markup = dialog.cardView.toHtml().lower()
    assert all(c["color"] in markup for c in CLASSES[1:])  # the swatches
    assert dialog.recommendedButton.isEnabled()
    assert dialog.warningLabel.text() == ""  # the raster matches the training data

    dialog.modelFile.setFilePath("")
    assert dialog.card is None and "Choose a model" in dialog.cardView.toPlainText()


@pytest.mark.parametrize("kind", ["garbled", "no_card"])
def test_unreadable_model_is_shown_and_refused(dialog, layers, net, tmp_path, kind):
    path = str(tmp_path / "bad.onnx")
    if kind == "garbled":
        with open(path, "wb") as f:
            f.write(np.random.default_rng(1).bytes(2000))
        expected = "is not a valid ONNX model"
    else:
        export_onnx(net, 3, path, sample_size=32)
        expected = "carries no GeoSeg model card"
    setup(dialog, layers["match"], path, tmp_path / "out.tif")
    assert dialog.card is None and expected in dialog.card_error
    assert expected in dialog.cardView.toPlainText() and "#c00000" in dialog.cardView.toHtml().lower()
    assert not dialog.recommendedButton.isEnabled() and dialog.warningLabel.text() == ""
    assert_refused(dialog, expected)


@pytest.mark.parametrize(
    ("raster", "expected"),
    [
        ("match", None),
        ("coarse", "The model expects 2 m (EPSG:32633); this raster is 10 m (EPSG:32633); GeoSeg will read it at 2 m."),
        ("fourband", "4 bands"),
        ("utm34", "GeoSeg will read it at 2 m in the model's CRS EPSG:32633"),
    ],
)
def test_compatibility_warnings(dialog, model, layers, raster, expected):
    dialog.set_input_layer(layers["match"])
    dialog.modelFile.setFilePath(model)
    assert dialog.warningLabel.text() == ""
    dialog.set_input_layer(layers[raster])  # a new layer re-checks
    if expected is None:
        assert dialog.warningLabel.text() == ""
    else:
        assert expected in dialog.warningLabel.text()
        dialog.modelFile.setFilePath("")  # no model: nothing to compare with
        assert dialog.warningLabel.text() == ""
        dialog.modelFile.setFilePath(model)  # a new model re-checks
        assert expected in dialog.warningLabel.text()


def test_resolution_choice_changes_the_plan_shown(dialog, model, layers):
    """Issue 17: RESOLUTION 1 (the raster's own) reads the coarse raster as it is, and warns as before."""
    dialog.set_input_layer(layers["coarse"])
    dialog.modelFile.setFilePath(model)
    assert "will read it at 2 m" in dialog.warningLabel.text()
    dialog.fields["resolution"].setCurrentIndex(1)
    assert "pixel size (10 × 10)" in dialog.warningLabel.text() and "will read" not in dialog.warningLabel.text()
    dialog.fields["resolution"].setCurrentIndex(0)


def settle(dlg: SegmentDialog, app, timeout: float = 60.0) -> str:
    """Process events until the tiling line shows the planner's answer to the current inputs; its text."""
    deadline = time.monotonic() + timeout
    while dlg.tiling_pending():
        assert time.monotonic() < deadline, "the tiling line got no answer in time"
        app.processEvents()
        time.sleep(0.005)
    return dlg.tilingInfo.text()


def test_tiling_message_shows_the_overlap_of_the_chosen_tiling(dialog, model, tmp_path, qgis_app):
    """Issue 18: the dialog shows core.tiling.describe of the tiling a run would use: for the tiny local
    model (its card has a radius but no global-context flag: probed) on a 300 × 200 raster, large tiles
    that compute each pixel 1.4× instead of 4×; explicit values change the message."""
    from geoseg.core.predict import tiling_plan
    from geoseg.core.tiling import describe

    path = str(tmp_path / "large.tif")
    make_raster(path, 300, 200, bands=3, dtype=gdal.GDT_Byte, nodata=None)
    layer = QgsRasterLayer(path, "large", "gdal")
    QgsProject.instance().addMapLayer(layer)
    try:
        assert settle(dialog, qgis_app) == ""  # no model, no layer: nothing to say
        setup(dialog, layer, model, tmp_path / "out.tif")
        text = settle(dialog, qgis_app)
        assert text == describe(tiling_plan(dialog.params()))
        assert text.startswith("Tiles 192 px, stride 160, crop 16: computes each pixel 1.4× (was 4×)"), text
        assert "receptive radius 2 px, from an impulse probe" in text  # probe 1, never below the card's 2
        dialog.chipSize.setValue(128)
        dialog.strideX.setValue(64)
        assert settle(dialog, qgis_app) == (
            "Tiles 128 px, stride 64 × 96, crop 16: computes each pixel 2.7× (was 4×); CHIP_SIZE, STRIDE_X as set."
        )
        dialog.modelFile.setFilePath("")
        assert not dialog.tiling_pending() and dialog.tilingInfo.text() == ""  # at once: nothing to plan
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


class BlockedPlan:
    """core.predict.tiling_plan whose first call blocks until `release` (a slow impulse probe of a large
    model); records each call's chip size and thread."""

    def __init__(self, real) -> None:
        self.real = real
        self.started, self.release, self.first_done = threading.Event(), threading.Event(), threading.Event()
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, p):
        self.calls.append((p.chip_size, threading.current_thread() is threading.main_thread()))
        first = len(self.calls) == 1
        if first:
            self.started.set()
            self.release.wait(20)  # if this ran on the UI thread, the dialog would hang here
        try:
            return self.real(p)
        finally:
            if first:
                self.first_done.set()


@pytest.fixture()
def blocked(monkeypatch):
    from geoseg.core import predict

    plan = BlockedPlan(predict.tiling_plan)
    monkeypatch.setattr(predict, "tiling_plan", plan)
    yield plan
    plan.release.set()  # never leave the planner thread waiting
    assert plan.first_done.wait(30)


def test_tiling_line_is_planned_off_the_ui_thread(dialog, model, layers, tmp_path, qgis_app, blocked):
    """Issue 18: the first plan of a model probes it, which takes seconds for a large model: the planner
    thread does it while the line says so and the form goes on; an answer for older inputs never replaces a
    newer one, and a request overtaken while queued is not worked out at all."""
    from geoseg.core.tiling import describe
    from geoseg.ui.segment_dialog import MEASURING_TEXT

    setup(dialog, layers["match"], model, tmp_path / "out.tif")  # returns while the probe still runs
    assert blocked.started.wait(10) and not blocked.first_done.is_set()
    assert dialog.tilingInfo.text() == MEASURING_TEXT and dialog.tiling_pending()
    dialog.chipSize.setValue(128)  # queued behind the probe, then overtaken by the next change
    dialog.strideX.setValue(64)
    qgis_app.processEvents()
    assert dialog.tilingInfo.text() == MEASURING_TEXT  # the same model: still being measured

    seen: list[tuple[int, str, str]] = []  # after the dialog's own slot: (generation, answer, line shown)

    def watch(g: int, text: str) -> None:
        seen.append((g, text, dialog.tilingInfo.text()))

    dialog._plan_relay.done.connect(watch)
    try:
        blocked.release.set()
        final = settle(dialog, qgis_app)
    finally:  # a late answer must not reach this test's closure once the dialog is gone
        dialog._plan_relay.done.disconnect(watch)
    assert final == describe(blocked.real(dialog.params())) and final.startswith("Tiles 128 px, stride 64"), final
    assert blocked.calls == [(None, False), (128, False)]  # automatic, then 128 × 64; the middle one skipped
    (stale_gen, stale, shown), (new_gen, answer, after) = seen
    assert stale_gen < new_gen and stale.startswith("Tiles") and stale != final  # a real but old plan ...
    assert shown == MEASURING_TEXT  # ... that did not replace the line
    assert answer == after == final


def test_closing_while_planning_does_not_crash(qgis_app, qgis_iface, model, layers, tmp_path, blocked):
    """The dialog destroyed (plugin unloaded) while the planner thread probes: the late answer is dropped."""
    from qgis.PyQt import sip

    from geoseg.ui.segment_dialog import SETTINGS_PREFIX

    with fresh_settings(SETTINGS_PREFIX):
        dlg = SegmentDialog(qgis_iface)
        setup(dlg, layers["match"], model, tmp_path / "out.tif")
        assert blocked.started.wait(10) and dlg.tiling_pending()
        dlg.close()
        sip.delete(dlg)
        blocked.release.set()
        assert blocked.first_done.wait(30)
        for _ in range(20):  # the answer's queued signal, if any, reaches a deleted dialog
            qgis_app.processEvents()
            time.sleep(0.01)
        assert sip.isdeleted(dlg) and dlg.tiling_pending()  # never shown, nothing raised


def test_run_while_the_model_is_measured_waits_with_qgis_responsive(
    dialog, model, layers, tmp_path, qgis_app, monkeypatch
):
    """Run pressed while the planner thread still probes a new model: instead of blocking the UI thread on
    the probe (the run's preflight needs it), Run waits with the event loop running and Run disabled, then
    starts the task; the probe runs once."""
    from qgis.PyQt.QtCore import QTimer

    from geoseg.core import tiling
    from geoseg.ui.segment_dialog import WAITING_TEXT

    tiling.clear_cache()
    started, release, probes = threading.Event(), threading.Event(), []
    real = tiling._measure

    def slow(*args):
        probes.append(threading.current_thread() is threading.main_thread())
        started.set()
        release.wait(20)
        return real(*args)

    monkeypatch.setattr(tiling, "_measure", slow)
    seen: list = []

    def meanwhile() -> None:  # runs only if the UI thread keeps processing events while Run waits
        seen.extend([dialog.runButton.isEnabled(), dialog.messageLabel.text(), dialog.task])
        release.set()

    try:
        setup(dialog, layers["match"], model, tmp_path / "out.tif")
        assert started.wait(10) and tiling.measuring()
        QTimer.singleShot(50, meanwhile)
        task = dialog.run()
    finally:
        release.set()
    assert seen == [False, WAITING_TEXT, None]
    assert task is not None and dialog.task is task and probes == [False]  # measured once, off the UI thread
    wait_for(dialog, qgis_app)
    assert dialog.last_error is None and os.path.isfile(tmp_path / "out.tif") and dialog.runButton.isEnabled()


def test_recommended_tiling(dialog, model, layers, tmp_path):
    setup(dialog, layers["match"], model, tmp_path / "out.tif")
    dialog.recommendedButton.click()
    assert (dialog.chipSize.value(), dialog.strideX.value(), dialog.strideY.value(), dialog.crop.value()) == (
        32,
        24,
        24,
        4,
    )
    p = dialog.params()
    assert (p.chip_size, p.stride_x, p.stride_y, p.crop) == (32, 24, 24, 4)


# ---------------------------------------------------------------- params and checks
def test_params_maps_widgets(dialog, model, layers, rasters, tmp_path):
    out = str(tmp_path / "classes.tif")
    setup(dialog, layers["match"], model, out)
    defaults = dialog.params()
    assert defaults == SegmentParams(rasters["match"], model, out)  # the dialog's defaults are core's

    probs = str(tmp_path / "probs.tif")
    dialog.probabilitiesFile.setFilePath(probs)
    set_widgets(dialog, chipSize=64, strideX=40, strideY=30, crop=0, batchSize=0, memoryBudget=512, backend=2, device=1)
    assert dialog.params() == dataclasses.replace(
        defaults,
        probabilities_path=probs,
        chip_size=64,
        stride_x=40,
        stride_y=30,
        crop=0,
        batch_size=0,
        memory_budget_mb=512.0,
        backend="torch",
        device="cpu",
    )
    set_widgets(dialog, crop=-1, backend=1, device=2)
    p = dialog.params()
    assert (p.crop, p.backend, p.device) == (None, "onnxruntime", "cuda")


@pytest.mark.parametrize(
    ("model_path", "output", "probabilities", "message", "marked"),
    [
        (" ", "out.tif", "", "Model: choose", "modelFile"),  # the dialog's own: nothing chosen
        ("MODEL", " ", "", "Class raster: choose", "outputFile"),
        # the rules about the values are core's (core.predict.preflight), worded by core
        ("MODEL", "out.png", "", r"OUTPUT must be a GeoTIFF file name ending in \.tif", "outputFile"),
        (
            "MODEL",
            "out.tif",
            "probs.img",
            r"OUTPUT_PROBABILITIES must be a GeoTIFF file name ending in \.tif",
            "probabilitiesFile",
        ),
        ("MODEL", "out.tif", "out.tif", "OUTPUT_PROBABILITIES must differ from OUTPUT", "probabilitiesFile"),
    ],
)
def test_params_reports_missing_or_bad_inputs(
    dialog, model, layers, tmp_path, model_path, output, probabilities, message, marked
):
    dialog.set_input_layer(layers["match"])
    dialog.modelFile.setFilePath(model if model_path == "MODEL" else model_path)
    dialog.outputFile.setFilePath(str(tmp_path / output) if output.strip() else output)
    dialog.probabilitiesFile.setFilePath(str(tmp_path / probabilities) if probabilities else "")
    if message.endswith("choose"):
        with pytest.raises(GeoSegError, match=message):
            dialog.params()
    assert_refused(dialog, message.replace("\\", ""))
    assert getattr(dialog, marked).styleSheet() == FIELD_ERROR_STYLE  # the field the error is about


def test_params_without_a_raster(qgis_app, qgis_iface, model, tmp_path):
    with open_dialog(SegmentDialog, qgis_app, qgis_iface) as dlg:
        dlg.set_input_layer(None)
        dlg.modelFile.setFilePath(model)
        dlg.outputFile.setFilePath(str(tmp_path / "out.tif"))
        with pytest.raises(GeoSegError, match="Input raster: choose a raster layer"):
            dlg.params()


@pytest.mark.parametrize("which", ["output", "probabilities"])
def test_existing_output_is_refused(dialog, model, layers, tmp_path, which):
    out, probs = tmp_path / "out.tif", tmp_path / "probs.tif"
    setup(dialog, layers["match"], model, out)
    dialog.probabilitiesFile.setFilePath(str(probs))
    existing = out if which == "output" else probs
    existing.write_bytes(b"keep me")
    assert_refused(dialog, "already exists")
    assert "never overwrites" in dialog.messageLabel.text()
    assert existing.read_bytes() == b"keep me"


def test_missing_model_file_is_refused(dialog, layers, tmp_path):
    setup(dialog, layers["match"], str(tmp_path / "gone.onnx"), tmp_path / "out.tif")
    assert dialog.card is None and "file not found" in dialog.cardView.toPlainText()
    assert_refused(dialog, "MODEL: file not found")


def test_validate_inputs_accepts(dialog, model, layers, tmp_path):
    setup(dialog, layers["coarse"], model, tmp_path / "out.tif")  # a warning does not block
    p = dialog.validate_inputs()
    assert p is not None and p.output_path == str(tmp_path / "out.tif")
    assert dialog.messageLabel.text() == ""


def test_settings_round_trip(dialog, model, layers, tmp_path, qgis_iface):
    setup(dialog, layers["match"], model, tmp_path / "out.tif")
    dialog.probabilitiesFile.setFilePath(str(tmp_path / "p.tif"))
    set_widgets(
        dialog,
        chipSize=48,
        strideX=20,
        strideY=22,
        crop=3,
        batchSize=5,
        memoryBudget=768,
        backend=1,
        device=1,
        addToMap=False,
    )
    dialog.save_settings()
    other = SegmentDialog(qgis_iface)
    try:
        assert other.modelFile.filePath() == model and other.card is not None  # the card is shown again
        assert "water" in other.cardView.toPlainText()
        assert other.outputFile.filePath() == str(tmp_path / "out.tif")
        assert other.probabilitiesFile.filePath() == str(tmp_path / "p.tif")
        assert (
            other.chipSize.value(),
            other.strideX.value(),
            other.strideY.value(),
            other.crop.value(),
            other.batchSize.value(),
            other.memoryBudget.value(),
        ) == (48, 20, 22, 3, 5, 768)
        assert (other.backend.currentIndex(), other.device.currentIndex(), other.addToMap.isChecked()) == (1, 1, False)
    finally:
        other.deleteLater()


# ---------------------------------------------------------------- style
def test_apply_class_style(tmp_path, qgis_app):
    values = np.array([[0, 2, 7, 255], [7, 7, 2, 0]], dtype=np.uint8)
    path = write_classes(str(tmp_path / "classes.tif"), values)
    layer = QgsRasterLayer(path, class_layer_name(path, "scene"), "gdal")
    assert layer.isValid() and layer.name() == "scene — GeoSeg classes"
    assert class_layer_name("/x/y/result.tif") == "result — GeoSeg classes"
    apply_class_style(layer, CLASSES)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer) and renderer.band() == 1
    got = [(int(c.value), c.color.name(), c.label) for c in renderer.classes()]
    assert got == [(c["value"], c["color"], c["name"]) for c in CLASSES]


def test_style_probabilities(tmp_path, qgis_app):
    path = str(tmp_path / "p.tif")
    make_raster(path, 8, 8, bands=3, dtype=gdal.GDT_Float32, nodata=-1)
    layer = QgsRasterLayer(path, "p", "gdal")
    style_probabilities(layer)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandGrayRenderer) and renderer.grayBand() == 1
    ce = renderer.contrastEnhancement()
    assert (ce.minimumValue(), ce.maximumValue()) == (0.0, 1.0)


# ---------------------------------------------------------------- running
def reference(net: nn.Module, raster: str) -> np.ndarray:
    """Whole-image inference with torch: the class values the tiled run must reproduce."""
    pixels = gdal.Open(raster).ReadAsArray().astype(np.float32)
    x = (pixels - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    with torch.no_grad():
        logits = net(torch.from_numpy(x[None]))[0].numpy()
    return np.array([c["value"] for c in CLASSES], np.uint8)[logits.argmax(axis=0)]


def test_run_segments_and_adds_styled_layers(dialog, model, net, layers, rasters, tmp_path, qgis_app, qgis_iface):
    out, probs = tmp_path / "classes.tif", tmp_path / "probs.tif"
    setup(dialog, layers["match"], model, out)
    dialog.probabilitiesFile.setFilePath(str(probs))
    dialog.recommendedButton.click()
    n_success = len(qgis_iface.messageBar().get_messages(Qgis.Success))
    run_and_wait(dialog, qgis_app)

    assert dialog.last_error is None, dialog.last_error
    result = dialog.last_result
    assert result.output_path == str(out) and result.probabilities_path == str(probs)
    got = gdal.Open(str(out)).ReadAsArray()
    expected = reference(net, rasters["match"])
    assert got.shape == expected.shape and np.mean(got != expected) < 0.001

    messages = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert len(messages) == n_success + 1
    assert (
        f"Segmented match with custom: {out} ({result.tiles} tiles, {result.seconds:.1f} s, "
        f"{result.backend}/{result.provider}, batch size 8)"
    ) in messages[-1]
    assert result.backend == "onnxruntime" and "Segmented match" in dialog.messageLabel.text()
    assert dialog.progress.value() == 100 and dialog.runButton.isEnabled()

    layer = dialog.last_layer
    assert layer is not None and QgsProject.instance().mapLayer(layer.id()) is layer
    assert layer.name() == "match — GeoSeg classes" and layer.source() == str(out)
    assert [(int(c.value), c.color.name(), c.label) for c in layer.renderer().classes()] == [
        (c["value"], c["color"], c["name"]) for c in CLASSES
    ]
    prob_layer = dialog.last_probabilities_layer
    assert prob_layer is not None and prob_layer.name() == "match — GeoSeg probabilities"
    assert isinstance(prob_layer.renderer(), QgsSingleBandGrayRenderer)

    # the same output again is refused; without "add to map" nothing is added
    assert_refused(dialog, "already exists")
    dialog.outputFile.setFilePath(str(tmp_path / "again.tif"))
    dialog.probabilitiesFile.setFilePath("")
    dialog.addToMap.setChecked(False)
    count = len(QgsProject.instance().mapLayers())
    assert dialog.run() is not None
    wait_for(dialog, qgis_app)
    assert dialog.last_error is None and os.path.isfile(tmp_path / "again.tif")
    assert dialog.last_layer is None and len(QgsProject.instance().mapLayers()) == count


def test_band_mismatch_is_refused_before_running(dialog, model, layers, tmp_path):
    setup(dialog, layers["fourband"], model, tmp_path / "out.tif")  # core's preflight: 4 bands, 3-band model
    assert_refused(dialog, "INPUT has 4 bands, but the model was trained on 3")


def test_core_error_is_reported(dialog, layers, tmp_path, qgis_app, qgis_iface):
    wrong = str(tmp_path / "wrong.onnx")  # the card lists 3 classes, the network returns 5
    torch.manual_seed(0)
    export_onnx(torch.nn.Conv2d(3, 5, 3, padding=1), 3, wrong, sample_size=32, metadata={CARD_KEY: json.dumps(card())})
    setup(dialog, layers["match"], wrong, tmp_path / "out.tif")
    n_critical = len(qgis_iface.messageBar().get_messages(Qgis.Critical))
    assert dialog.run() is not None
    wait_for(dialog, qgis_app)
    assert dialog.last_result is None and "returns shape [1, 5, 32, 32]" in dialog.last_error
    assert len(qgis_iface.messageBar().get_messages(Qgis.Critical)) == n_critical + 1
    assert "c00000" in dialog.messageLabel.styleSheet() and not os.path.exists(tmp_path / "out.tif")
    assert dialog.runButton.isEnabled() and dialog.last_layer is None


# ---------------------------------------------------------------- plugin
def test_dialog_import_does_not_load_heavy_modules():
    code = (
        "import sys, geoseg.ui.segment_dialog, geoseg.adapter.style; "
        "print(','.join(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.fixture()
def dialog(segment_dialog):
    return segment_dialog


# ---------------------------------------------------------------- a layer GDAL cannot open (issue 17)
@pytest.fixture(scope="module")
def one_band(tmp_path_factory):
    from tests.support.layer_fixtures import one_band_scene

    return one_band_scene(str(tmp_path_factory.mktemp("oneband")))


@pytest.fixture()
def virtual(one_band, layers):
    """A virtual raster of the one-band scene in the project (the `layers` fixture removes it)."""
    from tests.support.layer_fixtures import virtual_layer

    return QgsProject.instance().addMapLayer(virtual_layer(one_band[0]))


def test_layer_copy_is_checked_before_and_after_it(dialog, one_band, virtual, tmp_path, qgis_app, monkeypatch):
    """What needs no raster is refused before the copy (no task); what needs it is refused by the task
    after the copy, reported the same way: red message, the parameter's field marked; nothing left."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    (tmp_path / "taken.tif").write_bytes(b"")
    setup(dialog, virtual, one_band[1], tmp_path / "taken.tif")
    assert_refused(dialog, "already exists")
    assert dialog.outputFile.styleSheet() == FIELD_ERROR_STYLE and os.listdir(tempfile.tempdir) == []

    dialog.outputFile.setFilePath(str(tmp_path / "out.tif"))
    dialog.chipSize.setValue(32)  # issue 18: else a local model's default chip grows with the raster
    dialog.fields["resolution"].setCurrentIndex(2)  # a given pixel size of 0: core's grid plan (it needs the
    dialog.fields["pixel_size"].setValue(0.0)  # raster) refuses it; the layer's copy has its own pixel size
    assert dialog.run() is not None
    wait_for(dialog, qgis_app)
    assert "PIXEL_SIZE must be above 0" in dialog.messageLabel.text()
    assert "c00000" in dialog.messageLabel.styleSheet()
    assert dialog.fields["pixel_size"].styleSheet() == FIELD_ERROR_STYLE
    assert dialog.last_result is None and dialog.runButton.isEnabled()
    assert sorted(os.listdir(tmp_path)) == ["taken.tif", "tmp"] and os.listdir(tempfile.tempdir) == []


def test_layer_action_segments_a_virtual_raster(qgis_app, qgis_iface, qgis_processing, one_band, virtual, tmp_path):
    """Right-click "Segment layer…" on a virtual raster: the task copies it and the class map equals the
    file's (core on the GeoTIFF the virtual raster computes from)."""
    import importlib

    from geoseg.core.predict import segment

    raster, model = one_band
    segment(SegmentParams(input_path=raster, model_path=model, output_path=str(tmp_path / "file.tif")))
    plugin = importlib.import_module("geoseg").classFactory(qgis_iface)
    plugin.initGui()
    try:
        qgis_iface.setActiveLayer(virtual)
        plugin.layer_action.trigger()
        dlg = plugin.dialogs["segment"]
        assert dlg.inputLayer.currentLayer() is virtual
        dlg.modelFile.setFilePath(model)
        dlg.outputFile.setFilePath(str(tmp_path / "action.tif"))
        run_and_wait(dlg, qgis_app)
        assert dlg.last_error is None, dlg.last_error
        expected = gdal.Open(str(tmp_path / "file.tif")).ReadAsArray()
        assert np.array_equal(gdal.Open(str(tmp_path / "action.tif")).ReadAsArray(), expected)
        assert dlg.last_layer is not None and "virtual" in dlg.last_layer.name()
    finally:
        plugin.unload()
