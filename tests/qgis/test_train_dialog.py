"""TrainDialog inside a real QGIS (pytest-qgis): widgets → TrainParams → training task with a live plot."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
import threading
import time

import pytest
from matplotlib.backends.backend_qt5agg import FigureCanvasQTAgg
from qgis.core import Qgis, QgsApplication, QgsSettings
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEvent

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import GeoSegError
from geoseg.core.options import ARCHITECTURE_LABELS, LOSS_LABELS
from geoseg.core.train import EpochReport, TrainParams, output_paths
from geoseg.ui import train_dialog
from geoseg.ui.train_dialog import SETTINGS_PREFIX, TORCH_MISSING, TrainDialog
from tests.support.helpers import fresh_settings, make_raster, make_vector, open_dialog, set_widgets, utm_box, wait_for

WIDGETS = (
    "chipsDir",
    "architecture",
    "epochs",
    "batchSize",
    "learningRate",
    "loss",
    "device",
    "seed",
    "outputModel",
    "classWeights",
    "ignoreBackground",
    "schedule",
    "patience",
    "augment",
    "resume",
    "modelOptions",
    "deviceLabel",
    "plotCanvas",
    "classTable",
    "progress",
    "runButton",
    "cancelButton",
    "closeButton",
)
TINY = '{"base_width": 4, "depth": 2}'
NAMES = {1: "water", 2: "forest", 3: "urban"}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def chips_dir(tmp_path_factory) -> str:
    """96 x 96 px, 3 bands, 32 px chips → 9 chips, 30 % validation; 4 classes with background."""
    folder = tmp_path_factory.mktemp("train_data")
    raster = str(folder / "img.tif")
    make_raster(raster, 96, 96, bands=3)
    labels = make_vector(
        str(folder / "labels.gpkg"),
        [(utm_box(5, 5, 40, 30), 1), (utm_box(50, 40, 90, 85), 2), (utm_box(10, 50, 40, 80), 3)],
        names=NAMES,
    )
    out = str(folder / "chips")
    result = export_chips(
        ExportParams(raster, labels, out, class_field="cls", name_field="name", chip_size=32, validation_fraction=0.3)
    )
    assert result.n_chips == 9 and result.n_validation > 0
    return out


@pytest.fixture(autouse=True)
def clean_settings():
    with fresh_settings(SETTINGS_PREFIX):
        yield


@pytest.fixture()
def dialog(qgis_app, qgis_iface):
    with open_dialog(TrainDialog, qgis_app, qgis_iface) as dlg:
        yield dlg


def setup(dlg: TrainDialog, chips_dir: str, out, epochs: int = 2) -> None:
    """A tiny CPU run: 2 epochs of a 4-channel, depth-2 UNet in batches of 4."""
    dlg.chipsDir.setFilePath(chips_dir)
    dlg.outputModel.setFilePath(str(out))
    set_widgets(dlg, modelOptions=TINY, epochs=epochs, batchSize=4, device=1)  # device 1: CPU


def items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def assert_refused(dlg: TrainDialog, expected: str) -> None:
    """validate_inputs and run refuse, in red, and no task starts."""
    assert dlg.validate_inputs() is None
    assert dlg.run() is None and dlg.task is None
    assert expected in dlg.messageLabel.text(), dlg.messageLabel.text()
    assert "c00000" in dlg.messageLabel.styleSheet()


# ---------------------------------------------------------------- tests
def test_constructs_with_tooltips_and_defaults(dialog):
    for name in WIDGETS:
        w = dialog.findChild(object, name)
        assert w is not None, name
        assert w.toolTip(), f"{name} has no tooltip"
    assert isinstance(dialog.findChild(object, "plotCanvas"), FigureCanvasQTAgg)
    assert dialog.chipsDir.storageMode() == QgsFileWidget.GetDirectory
    assert dialog.outputModel.storageMode() == QgsFileWidget.SaveFile
    advanced = dialog.findChild(QgsCollapsibleGroupBox)
    assert advanced is not None and advanced.isAncestorOf(dialog.modelOptions)
    assert advanced.isAncestorOf(dialog.resume) and not advanced.isAncestorOf(dialog.epochs)

    assert items(dialog.architecture) == list(ARCHITECTURE_LABELS) and items(dialog.loss) == list(LOSS_LABELS)
    assert dialog.epochs.value() == 20 and dialog.batchSize.value() == 8
    assert dialog.learningRate.value() == pytest.approx(0.001)
    assert dialog.loss.currentIndex() == 2 and dialog.loss.currentText() == "Dice + cross-entropy"
    assert dialog.augment.isChecked() and not dialog.resume.isChecked()
    assert dialog.patience.value() == 0 and dialog.patience.text() == "off"
    assert dialog.classTable.rowCount() == 0 and list(dialog.trainLine.get_xdata()) == []

    assert dialog.torch_ok
    label = dialog.deviceLabel.text().lower()
    assert ("cpu" in label or "cuda" in label) and "torch" in label
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_params_maps_widgets(dialog, chips_dir, tmp_path):
    out = str(tmp_path / "model.pt")
    dialog.chipsDir.setFilePath(chips_dir)
    dialog.outputModel.setFilePath(out)
    defaults = dialog.params()
    from qgis.core import QgsApplication

    cache = os.path.join(QgsApplication.qgisSettingsDirPath(), "geoseg")  # named weights go into the profile
    assert defaults == TrainParams(chips_dir, out, weights_cache=cache)  # otherwise the dialog's defaults are core's

    options = {"base_width": 8, "depth": 3, "deep_supervision": True}
    set_widgets(
        dialog,
        architecture=1,
        epochs=5,
        batchSize=3,
        learningRate=0.005,
        loss=4,
        device=1,
        seed=77,
        classWeights=1,
        ignoreBackground=True,
        schedule=1,
        patience=3,
        augment=False,
        resume=True,
        modelOptions=json.dumps(options),
    )
    assert dialog.params() == dataclasses.replace(
        defaults,
        architecture="unetpp",
        epochs=5,
        batch_size=3,
        learning_rate=0.005,
        loss="tversky",
        device="cpu",
        seed=77,
        class_weights="inverse_frequency",
        ignore_background=True,
        schedule="cosine",
        patience=3,
        augment=False,
        resume=True,
        model_options=options,
    )

    set_widgets(dialog, architecture=3, loss=5, device=2, modelOptions="  ")
    p = dialog.params()
    assert (p.architecture, p.loss, p.device, p.model_options) == ("fcn", "unified_focal", "cuda", {})


@pytest.mark.parametrize(
    ("chips", "output", "options", "message"),
    [
        ("  ", "model.pt", "", "Chips folder: choose"),
        ("CHIPS", " ", "", "Output model: choose"),
        ("CHIPS", "model.onnx", "", r"Output model: the file name must end in \.pt"),
        ("CHIPS", "model.pt", '{"base_width": 4', "MODEL_OPTIONS is not valid JSON"),
        ("CHIPS", "model.pt", "[4, 2]", "MODEL_OPTIONS must be a JSON object"),
    ],
)
def test_params_reports_missing_or_bad_inputs(dialog, chips_dir, tmp_path, chips, output, options, message):
    dialog.chipsDir.setFilePath(chips_dir if chips == "CHIPS" else chips)
    dialog.outputModel.setFilePath(str(tmp_path / output) if output.strip() else output)
    dialog.modelOptions.setText(options)
    with pytest.raises(GeoSegError, match=message):
        dialog.params()


def test_validate_inputs_refuses_without_starting(dialog, chips_dir, tmp_path):
    setup(dialog, chips_dir, tmp_path / "old.pt")
    for ext in (".pt", ".onnx"):
        existing = tmp_path / f"old{ext}"
        existing.write_bytes(b"keep me")
        assert_refused(dialog, f"{existing} already exists")
        assert existing.read_bytes() == b"keep me"
        existing.unlink()

    (tmp_path / "empty").mkdir()
    dialog.chipsDir.setFilePath(str(tmp_path / "empty"))
    assert_refused(dialog, "has no chips.csv")
    dialog.chipsDir.setFilePath(str(tmp_path / "missing"))
    assert_refused(dialog, "does not exist")

    dialog.chipsDir.setFilePath(chips_dir)
    dialog.modelOptions.setText('{"base_widht": 4}')
    assert_refused(dialog, "MODEL_OPTIONS: unknown option(s) base_widht for unet")

    dialog.modelOptions.setText(TINY)
    assert dialog.validate_inputs() == dialog.params()  # valid: the red message is cleared
    assert dialog.messageLabel.text() == "" and dialog.messageLabel.styleSheet() == ""
    assert os.listdir(tmp_path) == ["empty"]


def test_run_trains_plots_and_reports(dialog, chips_dir, tmp_path, qgis_app, qgis_iface):
    out = str(tmp_path / "model.pt")
    paths = output_paths(out)
    setup(dialog, chips_dir, out)
    n_success = len(qgis_iface.messageBar().get_messages(Qgis.Success))
    task = dialog.run()
    assert task is not None and dialog.task is task
    assert not dialog.runButton.isEnabled() and dialog.cancelButton.isEnabled()
    assert QgsSettings().value(SETTINGS_PREFIX + "output_model") == out  # run remembers the values
    wait_for(dialog, qgis_app)

    assert dialog.last_error is None, dialog.last_error
    r = dialog.last_result
    assert (r.model_path, r.onnx_path, r.metrics_path) == (paths["model"], paths["onnx"], paths["metrics"])
    assert all(os.path.isfile(paths[k]) for k in ("model", "onnx", "metrics"))
    assert r.epochs_run == 2 and r.device == "cpu"
    assert [h.epoch for h in dialog.history] == [1, 2] and all(isinstance(h, EpochReport) for h in dialog.history)
    for line in (dialog.trainLine, dialog.valLine, dialog.miouLine):
        assert list(line.get_xdata()) == [1, 2]
    assert list(dialog.trainLine.get_ydata()) == pytest.approx([h.train_loss for h in dialog.history])
    assert list(dialog.miouLine.get_ydata()) == pytest.approx([h.val_miou for h in dialog.history])
    assert dialog.classTable.rowCount() == 4  # background + 3 classes
    assert [dialog.classTable.item(i, 0).text() for i in range(4)] == ["background", *NAMES.values()]

    messages = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert len(messages) == n_success + 1
    assert f"model saved to {paths['model']}" in messages[-1] and messages[-1].startswith("GeoSeg:")
    assert f"best validation mIoU {r.val_miou:.4f} at epoch {r.best_epoch}" in dialog.messageLabel.text()
    assert dialog.messageLabel.styleSheet() == "" and dialog.progress.value() == 100
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_epoch_reports_reach_the_main_thread(dialog, chips_dir, tmp_path, qgis_app, monkeypatch):
    threads = {"report": [], "slot": []}
    real_train, slot = train_dialog.train, dialog._on_epoch

    def spy_train(p, *, report, **kw):
        def spy_report(r):
            if isinstance(r, EpochReport):
                threads["report"].append(threading.current_thread())
            report(r)

        return real_train(p, report=spy_report, **kw)

    def spy_slot(r):
        threads["slot"].append(threading.current_thread())
        slot(r)

    monkeypatch.setattr(train_dialog, "train", spy_train)
    dialog._on_epoch = spy_slot  # _create_task connects the reporter's signal to this attribute
    setup(dialog, chips_dir, tmp_path / "model.pt")
    task = dialog.run()
    assert task.kwargs["report"] == dialog._reporter.report
    wait_for(dialog, qgis_app)
    assert dialog.last_error is None, dialog.last_error
    assert len(threads["report"]) == 2 and threading.main_thread() not in threads["report"]
    assert threads["slot"] == [threading.main_thread()] * 2
    assert [h.epoch for h in dialog.history] == [1, 2]
    assert dialog.progress.format().startswith("epoch 2/2 · batch ")  # the live batch loss was shown


def test_cancel_at_start_leaves_nothing(dialog, chips_dir, tmp_path, qgis_app, qgis_iface):
    setup(dialog, chips_dir, tmp_path / "cancelled.pt", epochs=50)
    n_warning = len(qgis_iface.messageBar().get_messages(Qgis.Warning))
    assert dialog.run() is not None and dialog.cancelButton.isEnabled()
    dialog.cancelButton.click()
    wait_for(dialog, qgis_app)

    assert dialog.last_result is None and dialog.history == []
    assert dialog.last_error and "nothing was written" in dialog.last_error
    assert dialog.messageLabel.text() == dialog.last_error and "c00000" in dialog.messageLabel.styleSheet()
    assert os.listdir(tmp_path) == []
    assert len(qgis_iface.messageBar().get_messages(Qgis.Warning)) == n_warning + 1
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_cancel_after_an_epoch_keeps_model_then_resume(dialog, chips_dir, tmp_path, qgis_app):
    out = str(tmp_path / "model.pt")
    paths = output_paths(out)
    setup(dialog, chips_dir, out, epochs=500)
    assert dialog.run() is not None
    deadline = time.monotonic() + 120
    while not dialog.history:
        assert dialog.task is not None and time.monotonic() < deadline, "no epoch report while training"
        qgis_app.processEvents()
        time.sleep(0.005)
    dialog.cancel()
    wait_for(dialog, qgis_app)

    assert dialog.last_result is None and dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()
    message = dialog.last_error
    assert message == dialog.messageLabel.text() and paths["model"] in message and "RESUME" in message
    assert os.path.isfile(paths["model"]) and os.path.isfile(paths["last"]) and os.path.isfile(paths["metrics"])
    assert not os.path.exists(paths["onnx"])
    m = re.search(r"cancelled in epoch (\d+)", message)
    assert m, message
    cancelled_in = int(m.group(1))  # epochs 1 .. cancelled_in - 1 are saved; train exactly one more
    dialog.epochs.setValue(cancelled_in)
    dialog.resume.setChecked(True)
    assert dialog.run() is not None
    wait_for(dialog, qgis_app)
    assert dialog.last_error is None, dialog.last_error
    assert [h.epoch for h in dialog.history] == [cancelled_in]
    assert dialog.last_result.epochs_run == cancelled_in and os.path.isfile(paths["onnx"])
    assert list(dialog.trainLine.get_xdata()) == [cancelled_in]


def test_settings_round_trip(dialog, chips_dir, tmp_path, qgis_iface):
    out = str(tmp_path / "remembered.pt")
    setup(dialog, chips_dir, out, epochs=7)
    set_widgets(
        dialog,
        architecture=2,
        learningRate=0.002,
        loss=3,
        seed=1234,
        classWeights=1,
        ignoreBackground=True,
        schedule=1,
        patience=4,
        augment=False,
        resume=True,
    )
    dialog.save_settings()
    assert QgsSettings().value(SETTINGS_PREFIX + "resume") is None  # resume is not remembered

    again = TrainDialog(qgis_iface)
    try:
        assert again.params() == dataclasses.replace(dialog.params(), resume=False)
        assert again.outputModel.filePath() == out and again.modelOptions.text() == TINY
        assert again.architecture.currentIndex() == 2 and not again.augment.isChecked() and not again.resume.isChecked()
    finally:
        again.deleteLater()

    QgsSettings().setValue(SETTINGS_PREFIX + "architecture", 99)  # e.g. from another plugin version
    QgsSettings().setValue(SETTINGS_PREFIX + "loss", -1)
    odd = TrainDialog(qgis_iface)
    try:
        assert (odd.architecture.currentIndex(), odd.loss.currentIndex(), odd.epochs.value()) == (0, 2, 7)
    finally:
        odd.deleteLater()


def test_plugin_action_opens_one_train_dialog(qgis_app, qgis_iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    if registry.providerById("geoseg") is not None:
        registry.removeProvider("geoseg")
    window = qgis_iface.mainWindow()
    plugin = importlib.import_module("geoseg").classFactory(qgis_iface)
    plugin.initGui()
    try:
        menus = [a.menu() for a in window.menuBar().actions() if a.menu() and a.menu().objectName() == "mGeoSegMenu"]
        assert len(menus) == 1
        action = next(a for a in menus[0].actions() if a.text() == "Train model…")
        action.trigger()
        dlg = plugin.dialogs["train"]
        assert isinstance(dlg, TrainDialog) and dlg.isVisible() and dlg.parent() is window
        assert dlg.windowTitle() == "GeoSeg — Train model"
        dlg.close()
        action.trigger()
        assert plugin.dialogs["train"] is dlg and dlg.isVisible()
        assert window.findChildren(TrainDialog) == [dlg]
    finally:
        plugin.unload()
        qgis_app.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert plugin.dialogs == {} and sip.isdeleted(dlg)


def test_without_torch_run_is_disabled(qgis_iface, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
    dlg = TrainDialog(qgis_iface)
    try:
        assert not dlg.torch_ok and not dlg.runButton.isEnabled()
        assert dlg.deviceLabel.text() == TORCH_MISSING and "c00000" in dlg.deviceLabel.styleSheet()
        assert dlg.run() is None and dlg.task is None and dlg.messageLabel.text() == TORCH_MISSING
    finally:
        dlg.deleteLater()
