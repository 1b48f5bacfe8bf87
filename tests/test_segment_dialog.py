"""SegmentDialog inside a real QGIS (pytest-qgis): model card, compatibility warnings, widgets →
SegmentParams → segmentation task → styled class layer; the plugin's "Segment layer…" action."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerType,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QEvent
from qgis.PyQt.QtWidgets import QTextBrowser
from torch import nn

from geoseg.core.errors import GeoSegError
from geoseg.core.predict import SegmentParams
from geoseg.models.export import export_onnx
from geoseg.ui.segment_dialog import BACKEND_LABELS, DEVICE_LABELS, SETTINGS_PREFIX, SegmentDialog
from geoseg.ui.style import apply_class_style, class_layer_name, style_probabilities

from helpers import UTM, fresh_settings, make_raster, open_dialog, run_and_wait, set_widgets, srs, wait_for

WIDGETS = ("inputLayer", "modelFile", "cardView", "warningLabel", "chipSize", "strideX", "strideY", "crop",
           "recommendedButton", "batchSize", "backend", "device", "outputFile", "probabilitiesFile", "addToMap",
           "messageLabel", "progress", "runButton", "cancelButton", "closeButton")
CLASSES = [{"value": 0, "name": "background", "color": "#000000"},
           {"value": 2, "name": "water", "color": "#1f77b4"},
           {"value": 7, "name": "forest", "color": "#2ca02c"}]
MEAN, STD = [120.0, 125.0, 130.0], [60.0, 55.0, 50.0]


def card() -> dict:
    return {"classes": CLASSES, "bands": [1, 2, 3], "in_channels": 3, "chip_size": 32,
            "normalization": {"mean": MEAN, "std": STD}, "architecture": "custom",
            "pixel_size": [2.0, 2.0], "crs": {"authid": "EPSG:32633", "wkt": srs(UTM).ExportToWkt()},
            "recommended": {"crop": 4, "stride": 24, "receptive_field_radius": 2},
            "metrics": {"val_miou": 0.8123}}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory, net) -> str:
    """A tiny ONNX model (receptive-field radius 1) carrying a valid GeoSeg card."""
    path = str(tmp_path_factory.mktemp("model") / "tiny.onnx")
    export_onnx(net, 3, path, sample_size=32, metadata={"geoseg": json.dumps(card())})
    return path


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> dict[str, str]:
    """Byte rasters: one like the training data, and ones differing in pixel size, bands or CRS."""
    folder = tmp_path_factory.mktemp("rasters")
    specs = {"match": {}, "coarse": {"pixel": 10.0}, "fourband": {"bands": 4}, "utm34": {"epsg": 32634}}
    out = {}
    for name, spec in specs.items():
        out[name] = str(folder / f"{name}.tif")
        make_raster(out[name], 70, 50, **{"bands": 3, "dtype": gdal.GDT_Byte, "nodata": None, **spec})
    return out


@pytest.fixture()
def layers(rasters, qgis_iface):
    """The rasters as layers of the project (removed afterwards, with whatever a run added)."""
    project = QgsProject.instance()
    before = set(project.mapLayers())
    added = {name: QgsRasterLayer(path, name, "gdal") for name, path in rasters.items()}
    for layer in added.values():
        assert layer.isValid()
        project.addMapLayer(layer)
    yield added
    project.removeMapLayers([i for i in project.mapLayers() if i not in before])


@pytest.fixture(autouse=True)
def clean_settings():
    with fresh_settings(SETTINGS_PREFIX):
        yield


@pytest.fixture()
def dialog(qgis_app, qgis_iface, layers):
    with open_dialog(SegmentDialog, qgis_app, qgis_iface) as dlg:
        yield dlg


def setup(dlg: SegmentDialog, layer: QgsRasterLayer, model: str, output) -> None:
    dlg.set_input_layer(layer)
    dlg.modelFile.setFilePath(model)
    dlg.outputFile.setFilePath(str(output))


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
    assert dialog.chipSize.text() == "from model" and "chip / 8" in dialog.crop.text()
    assert dialog.addToMap.isChecked()
    assert dialog.card is None and not dialog.recommendedButton.isEnabled()
    assert dialog.warningLabel.text() == ""
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_card_view_shows_the_model(dialog, model, layers):
    dialog.set_input_layer(layers["match"])
    dialog.modelFile.setFilePath(model)
    assert dialog.card is not None and dialog.card_error is None
    text = dialog.cardView.toPlainText()
    for expected in ("custom", "background", "water", "forest", "32 px", "EPSG:32633", "2 × 2",
                     "stride 24 px, crop 4 px", "0.8123", "1, 2, 3"):
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


@pytest.mark.parametrize(("raster", "expected"), [
    ("match", None), ("coarse", "pixel size (10 × 10)"), ("fourband", "4 bands"), ("utm34", "CRS")])
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


def test_recommended_tiling(dialog, model, layers, tmp_path):
    setup(dialog, layers["match"], model, tmp_path / "out.tif")
    dialog.recommendedButton.click()
    assert (dialog.chipSize.value(), dialog.strideX.value(), dialog.strideY.value(), dialog.crop.value()) == \
        (32, 24, 24, 4)
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
    set_widgets(dialog, chipSize=64, strideX=40, strideY=30, crop=0, batchSize=3, backend=2, device=1)
    assert dialog.params() == dataclasses.replace(
        defaults, probabilities_path=probs, chip_size=64, stride_x=40, stride_y=30, crop=0, batch_size=3,
        backend="torch", device="cpu")
    set_widgets(dialog, crop=-1, backend=1, device=2)
    p = dialog.params()
    assert (p.crop, p.backend, p.device) == (None, "onnxruntime", "cuda")


@pytest.mark.parametrize(("model_path", "output", "probabilities", "message"), [
    (" ", "out.tif", "", "Model: choose"),
    ("MODEL", " ", "", "Class raster: choose"),
    ("MODEL", "out.png", "", r"Class raster: the file name must end in \.tif"),
    ("MODEL", "out.tif", "probs.img", r"Probabilities: the file name must end in \.tif"),
    ("MODEL", "out.tif", "out.tif", "Probabilities: choose a file other than the class raster"),
])
def test_params_reports_missing_or_bad_inputs(dialog, model, layers, tmp_path, model_path, output, probabilities,
                                               message):
    dialog.set_input_layer(layers["match"])
    dialog.modelFile.setFilePath(model if model_path == "MODEL" else model_path)
    dialog.outputFile.setFilePath(str(tmp_path / output) if output.strip() else output)
    dialog.probabilitiesFile.setFilePath(str(tmp_path / probabilities) if probabilities else "")
    with pytest.raises(GeoSegError, match=message):
        dialog.params()
    assert_refused(dialog, message.replace("\\", ""))


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
    set_widgets(dialog, chipSize=48, strideX=20, strideY=22, crop=3, batchSize=5, backend=1, device=1,
                addToMap=False)
    dialog.save_settings()
    other = SegmentDialog(qgis_iface)
    try:
        assert other.modelFile.filePath() == model and other.card is not None  # the card is shown again
        assert "water" in other.cardView.toPlainText()
        assert other.outputFile.filePath() == str(tmp_path / "out.tif")
        assert other.probabilitiesFile.filePath() == str(tmp_path / "p.tif")
        assert (other.chipSize.value(), other.strideX.value(), other.strideY.value(), other.crop.value(),
                other.batchSize.value()) == (48, 20, 22, 3, 5)
        assert (other.backend.currentIndex(), other.device.currentIndex(), other.addToMap.isChecked()) == \
            (1, 1, False)
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
    assert (f"Segmented match with custom: {out} ({result.tiles} tiles, {result.seconds:.1f} s, "
            f"{result.backend}/{result.provider})") in messages[-1]
    assert result.backend == "onnxruntime" and "Segmented match" in dialog.messageLabel.text()
    assert dialog.progress.value() == 100 and dialog.runButton.isEnabled()

    layer = dialog.last_layer
    assert layer is not None and QgsProject.instance().mapLayer(layer.id()) is layer
    assert layer.name() == "match — GeoSeg classes" and layer.source() == str(out)
    assert [(int(c.value), c.color.name(), c.label) for c in layer.renderer().classes()] == \
        [(c["value"], c["color"], c["name"]) for c in CLASSES]
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
    export_onnx(torch.nn.Conv2d(3, 5, 3, padding=1), 3, wrong, sample_size=32, metadata={"geoseg": json.dumps(card())})
    setup(dialog, layers["match"], wrong, tmp_path / "out.tif")
    n_critical = len(qgis_iface.messageBar().get_messages(Qgis.Critical))
    assert dialog.run() is not None
    wait_for(dialog, qgis_app)
    assert dialog.last_result is None and "returns shape [1, 5, 32, 32]" in dialog.last_error
    assert len(qgis_iface.messageBar().get_messages(Qgis.Critical)) == n_critical + 1
    assert "c00000" in dialog.messageLabel.styleSheet() and not os.path.exists(tmp_path / "out.tif")
    assert dialog.runButton.isEnabled() and dialog.last_layer is None


# ---------------------------------------------------------------- plugin
def test_layer_context_action_opens_dialog_with_layer(qgis_app, qgis_iface, qgis_processing, layers):
    registry = QgsApplication.processingRegistry()
    if registry.providerById("geoseg") is not None:
        registry.removeProvider("geoseg")
    plugin = importlib.import_module("geoseg").classFactory(qgis_iface)
    plugin.initGui()
    try:
        action, _, layer_type, _ = next(e for e in qgis_iface.custom_layer_actions if e[0] is plugin.layer_action)
        assert layer_type == QgsMapLayerType.RasterLayer

        vector = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
        QgsProject.instance().addMapLayer(vector)
        qgis_iface.setActiveLayer(vector)
        n_warning = len(qgis_iface.messageBar().get_messages(Qgis.Warning))
        action.trigger()
        assert "segment" not in plugin.dialogs
        assert len(qgis_iface.messageBar().get_messages(Qgis.Warning)) == n_warning + 1

        for name in ("coarse", "utm34"):
            qgis_iface.setActiveLayer(layers[name])
            action.trigger()
            dlg = plugin.dialogs["segment"]
            assert isinstance(dlg, SegmentDialog) and dlg.isVisible()
            assert dlg.inputLayer.currentLayer() is layers[name]

        menu_action = next(a for a in plugin.actions if a.text() == "Segment raster…")
        dlg.close()
        menu_action.trigger()
        assert plugin.dialogs["segment"] is dlg and dlg.isVisible()
    finally:
        plugin.unload()
        qgis_app.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert plugin.dialogs == {} and qgis_iface.custom_layer_actions == []


def test_dialog_import_does_not_load_heavy_modules():
    code = ("import sys, geoseg.ui.segment_dialog, geoseg.ui.style; "
            "print(','.join(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_layer_action_runs_segmentation_and_styles_the_result(qgis_app, qgis_iface, qgis_processing, layers,
                                                               model, tmp_path):
    plugin = importlib.import_module("geoseg").classFactory(qgis_iface)
    plugin.initGui()
    try:
        qgis_iface.setActiveLayer(layers["match"])
        plugin.layer_action.trigger()  # right-click → "Segment layer…"
        dlg = plugin.dialogs["segment"]
        assert dlg.inputLayer.currentLayer() is layers["match"]
        dlg.modelFile.setFilePath(model)
        dlg.outputFile.setFilePath(str(tmp_path / "classes.tif"))
        assert dlg.run() is not None  # the task starts from the action's dialog
        wait_for(dlg, qgis_app)
        assert dlg.last_error is None, dlg.last_error
        assert os.path.isfile(tmp_path / "classes.tif")
        layer = dlg.last_layer
        assert layer is not None and QgsProject.instance().mapLayer(layer.id()) is layer
        assert isinstance(layer.renderer(), QgsPalettedRasterRenderer)
        assert [c.label for c in layer.renderer().classes()] == [c["name"] for c in card()["classes"]]
    finally:
        plugin.unload()


def test_cancel_leaves_no_output(dialog, model, tmp_path, qgis_app, qgis_iface):
    path = str(tmp_path / "big.tif")
    make_raster(path, 1500, 1200, bands=3, dtype=gdal.GDT_Byte, nodata=None)  # ~1800 tiles at batch 1
    big = QgsRasterLayer(path, "big", "gdal")
    QgsProject.instance().addMapLayer(big)
    try:
        setup(dialog, big, model, tmp_path / "classes.tif")
        dialog.probabilitiesFile.setFilePath(str(tmp_path / "probs.tif"))
        dialog.batchSize.setValue(1)
        assert dialog.run() is not None
        dialog.cancel()
        wait_for(dialog, qgis_app)
        assert dialog.last_result is None and "Cancelled" in (dialog.last_error or "")
        assert sorted(os.listdir(tmp_path)) == ["big.tif"]  # no class map, probabilities or partial file
        assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()
    finally:
        QgsProject.instance().removeMapLayer(big.id())
