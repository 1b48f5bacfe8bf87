"""Regenerate the README's pictures from real windows: QGIS (GUI application, xcb platform) in an X server.

Run under Xvfb, as `make screenshots` does:

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py docs/images

It makes the sample scene, then opens and drives each GeoSeg dialog the way a user would: the export
dialog exports chips, the train dialog trains a tiny UNet on them, the segment dialog segments the scene
with that model, the assess dialog compares that class map with the label polygons, the installer
shows what a QGIS without torch is offered, the settings dialog shows the device. Each dialog is
grabbed from the X screen (QScreen.grabWindow), so the pictures are what the window really shows.
`--state FILE` writes what was driven and checked (tests read it); `--epochs` shortens training for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QGuiApplication, QImage, QPainter

from geoseg.adapter.style import render_layers, true_colour
from geoseg.core import deps
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.sample import make_sample_scene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAMES = (
    "export_dialog.png",
    "chip_index.png",
    "train_dialog.png",
    "segment_dialog.png",
    "segment_result.png",
    "assess_dialog.png",
    "deps_dialog.png",
    "settings_dialog.png",
)


class Shooter:
    """Shows one window at a time (no compositing under Xvfb: an overlapping window would be grabbed
    too) and saves what the X server shows of it."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.state: dict[str, Any] = {"platform": QGuiApplication.platformName(), "shots": {}}

    def settle(self, seconds: float = 0.3) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.01)

    def shoot(self, window: Any, name: str) -> str:
        window.show()
        window.raise_()
        window.activateWindow()
        deadline = time.monotonic() + 20
        while not (window.windowHandle() and window.windowHandle().isExposed()) and time.monotonic() < deadline:
            self.settle(0.05)  # the X server maps a new window a little later
        self.settle()
        window.repaint()
        self.settle(0.2)
        screen = window.screen() or QGuiApplication.primaryScreen()
        for _ in range(50):  # a grab before the first paint reached the server is one flat colour
            pixmap = screen.grabWindow(int(window.winId()))
            if not flat(pixmap.toImage()):
                break
            window.repaint()
            self.settle(0.2)
        path = os.path.join(self.out_dir, name)
        if not pixmap.save(path):
            raise RuntimeError(f"could not save {path}")
        self.state["shots"][name] = {
            "window": [window.width(), window.height()],
            "image": [pixmap.width(), pixmap.height()],
        }
        return path

    def save_map(self, layers: list, name: str, width: int = 768, height: int = 640) -> str:
        path = os.path.join(self.out_dir, name)
        render_layers(layers, width, height).save(path)
        self.state["shots"][name] = {"window": None, "image": [width, height]}
        return path


def flat(img: QImage) -> bool:
    """All of a grid of sampled pixels have one colour (nothing painted yet)."""
    step_x, step_y = max(1, img.width() // 16), max(1, img.height() // 16)
    return len({img.pixel(x, y) for x in range(0, img.width(), step_x) for y in range(0, img.height(), step_y)}) <= 1


def check(condition: bool, what: str) -> None:
    """Driving failed: stop with what went wrong (the test and make show it)."""
    if not condition:
        raise RuntimeError(f"screenshots: {what}")


def run_dialog(dlg: Any, what: str, timeout: float = 900) -> None:
    """Click Run and process events until the dialog's task has reported back; raise on failure."""
    dlg.runButton.click()
    check(dlg.task is not None, f"the {what} dialog refused to run: {dlg.messageLabel.text()}")
    deadline = time.monotonic() + timeout
    while dlg.task is not None and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    check(dlg.task is None, f"the {what} dialog's task did not finish")
    check(not dlg.last_error, f"{what} failed: {dlg.last_error}")


def _split_renderer() -> QgsCategorizedSymbolRenderer:
    cats = []
    for value, colour in (("train", "#f0e442"), ("validation", "#d55e00")):
        sym = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": colour, "outline_width": "0.6"})
        cats.append(QgsRendererCategory(value, sym, value))
    return QgsCategorizedSymbolRenderer("split", cats)


def export_step(shots: Shooter, raster: QgsRasterLayer, labels: QgsVectorLayer, work: str) -> str:
    from geoseg.ui.export_dialog import ExportChipsDialog

    dlg = ExportChipsDialog(None)
    dlg.inputLayer.setLayer(raster)
    dlg.labelsLayer.setLayer(labels)
    dlg.classField.setField("class")
    dlg.nameField.setField("name")
    dlg.chipSize.setValue(64)
    dlg.strideX.setValue(0)
    dlg.strideY.setValue(0)
    dlg.splitMethod.setCurrentIndex(0)
    dlg.validationFraction.setValue(0.2)
    out = os.path.join(work, "chips")
    dlg.outputDir.setFilePath(out)
    dlg.indexCheck.setChecked(False)
    dlg.resize(560, dlg.sizeHint().height())
    dlg.show()
    run_dialog(dlg, "export")
    result = dlg.last_result
    check(result.n_chips > 0 and os.path.isfile(os.path.join(out, "chips.csv")), "export wrote no chips")
    check(dlg.progress.value() == 100 and "Exported" in dlg.messageLabel.text(), "export outcome not shown")
    shots.state["export"] = {
        "chips": result.n_chips,
        "train": result.n_train,
        "validation": result.n_validation,
        "message": dlg.messageLabel.text(),
        "class_field": dlg.classField.currentField(),
    }
    shots.shoot(dlg, "export_dialog.png")
    dlg.close()
    return out


def chip_index_picture(shots: Shooter, scene: Any, raster: QgsRasterLayer, work: str) -> None:
    """The scene with chip footprints coloured by split (128 px chips, spatial blocks)."""
    index = os.path.join(work, "blocks_index.gpkg")
    chip = 128 if min(raster.width(), raster.height()) >= 512 else 32  # a small (test) scene gets small chips
    export_chips(
        ExportParams(
            scene.raster,
            scene.labels,
            os.path.join(work, "blocks"),
            class_field="class",
            chip_size=chip,
            stride_x=chip,
            stride_y=chip,
            split_method="blocks",
            block_size=2 * chip,
            index_path=index,
        )
    )
    footprints = QgsVectorLayer(index, "chips", "ogr")
    footprints.setRenderer(_split_renderer())
    shots.save_map([footprints, raster], "chip_index.png")


def train_step(shots: Shooter, chips: str, work: str, epochs: int) -> str:
    from geoseg.ui.train_dialog import TrainDialog

    dlg = TrainDialog(None)
    dlg.chipsDir.setFilePath(chips)
    model = os.path.join(work, "unet.pt")
    dlg.outputModel.setFilePath(model)
    dlg.modelOptions.setText('{"base_width": 8, "depth": 3}')
    dlg.epochs.setValue(epochs)
    dlg.batchSize.setValue(8)
    dlg.learningRate.setValue(0.01)
    dlg.device.setCurrentIndex(1)
    dlg.resize(820, 860)
    dlg.show()
    run_dialog(dlg, "train")
    check(len(dlg.history) == epochs and os.path.isfile(model), "training did not run every epoch")
    check(dlg.classTable.rowCount() > 1, "the per-class table is empty")
    shots.state["train"] = {
        "epochs": len(dlg.history),
        "val_miou": dlg.last_result.val_miou,
        "table_rows": dlg.classTable.rowCount(),
        "device_label": dlg.deviceLabel.text(),
    }
    shots.shoot(dlg, "train_dialog.png")
    dlg.close()
    return os.path.splitext(model)[0] + ".onnx"


def segment_step(shots: Shooter, raster: QgsRasterLayer, model: str, work: str) -> QgsRasterLayer:
    from geoseg.ui.segment_dialog import SegmentDialog

    dlg = SegmentDialog(None)
    dlg.set_input_layer(raster)
    dlg.modelFile.setFilePath(model)
    check(dlg.card is not None, f"the segment dialog cannot read the model: {dlg.card_error}")
    dlg.use_recommended_tiling()
    dlg.outputFile.setFilePath(os.path.join(work, "sample_classes.tif"))
    dlg.resize(920, dlg.sizeHint().height())
    shots.shoot(dlg, "segment_dialog.png")
    run_dialog(dlg, "segment")
    check(dlg.last_layer is not None and dlg.last_layer.isValid(), "no class layer was added")
    shots.state["segment"] = {
        "output": os.path.exists(dlg.last_result.output_path),
        "card_classes": dlg.card.num_classes,
        "device_info": dlg.deviceInfo.text(),
        "provider": dlg.last_result.provider,
        "tiles": dlg.last_result.tiles,
    }
    half = QSize(384, 320)
    canvas = QImage(2 * half.width() + 8, half.height(), QImage.Format_ARGB32)
    canvas.fill(QColor("white"))
    painter = QPainter(canvas)
    painter.drawImage(0, 0, render_layers([raster], half.width(), half.height()))
    painter.drawImage(half.width() + 8, 0, render_layers([dlg.last_layer], half.width(), half.height()))
    painter.end()
    canvas.save(os.path.join(shots.out_dir, "segment_result.png"))
    shots.state["shots"]["segment_result.png"] = {"window": None, "image": [canvas.width(), canvas.height()]}
    dlg.close()
    return dlg.last_layer


def assess_step(shots: Shooter, classes: QgsRasterLayer, labels: QgsVectorLayer, work: str) -> None:
    """The class map written by the segment dialog against the label polygons (class field "class")."""
    from geoseg.ui.assess_dialog import AssessDialog

    dlg = AssessDialog(None)
    dlg.set_layers(classes, labels)
    dlg.classField.setField("class")
    dlg.reportFile.setFilePath(os.path.join(work, "accuracy.html"))
    dlg.resize(640, 720)
    dlg.show()
    run_dialog(dlg, "assess")
    result = dlg.last_result
    check(os.path.isfile(result.html_path) and os.path.isfile(result.report_path), "assess wrote no report")
    check(dlg.classTable.rowCount() > 1 and dlg.openReportButton.isEnabled(), "the per-class table is empty")
    rows = range(dlg.classTable.rowCount())
    shots.state["assess"] = {
        "overall_accuracy": result.overall_accuracy,
        "mean_iou": result.mean_iou,
        "table_rows": len(rows),
        "summary": dlg.summaryLabel.text(),
        "class_names": [dlg.classTable.item(r, 0).text() for r in rows],
        "class_field_visible": dlg.classField.isVisible(),
    }
    shots.shoot(dlg, "assess_dialog.png")
    dlg.close()


def deps_step(shots: Shooter, work: str) -> None:
    """The installer as a QGIS without the deep-learning stack sees it after clicking Train (CPU wheels)."""
    from geoseg.ui.deps_dialog import DepsDialog

    modules = [r.module for r in deps.REQUIREMENTS]
    target = os.path.join(
        os.path.expanduser("~"),
        ".local",
        "share",
        "QGIS",
        "QGIS3",
        "profiles",
        "default",
        "python",
        deps.DEPS_FOLDER,
        f"py{sys.version_info[0]}.{sys.version_info[1]}",
    )
    python = getattr(sys, "_base_executable", None) or sys.executable  # QGIS's python, not a venv's
    dlg = DepsDialog(None, step="train", modules=modules, target=target, cuda=False, python=python)
    command = dlg.commandView.toPlainText()
    check(
        dlg.missingList.count() == len(modules) and "torch>=2.1" in command and deps.CPU_INDEX in command,
        "the installer does not list the missing packages",
    )
    check(dlg.installButton.isEnabled(), "Install is not offered")
    dlg.outputView.setPlainText("pip's output appears here, line by line, while it runs.")
    shots.state["deps"] = {
        "missing": [dlg.missingList.item(i).text() for i in range(dlg.missingList.count())],
        "command": command,
        "install_enabled": dlg.installButton.isEnabled(),
    }
    shots.shoot(dlg, "deps_dialog.png")
    dlg.close()


def settings_step(shots: Shooter) -> None:
    from geoseg.ui.settings import SettingsDialog

    dlg = SettingsDialog(None)
    dlg.resize(620, dlg.sizeHint().height() + 60)
    dlg.show()
    dlg.widget.detectButton.click()
    text = dlg.widget.deviceInfo.text()
    check(text.startswith("device: ") and "providers available" in text, "the device is not shown")
    shots.state["settings"] = {
        "device_info": text,
        "batch_size": dlg.widget.batchSize.value(),
        "device": dlg.widget.device.currentText(),
    }
    shots.shoot(dlg, "settings_dialog.png")
    dlg.reject()


def render_all(out_dir: str, epochs: int = 15, size: tuple[int, int] = (768, 640)) -> Shooter:
    """Write the README's pictures into out_dir (see NAMES); tests use a smaller scene and fewer epochs."""
    os.makedirs(out_dir, exist_ok=True)
    shots = Shooter(out_dir)
    work = tempfile.mkdtemp(prefix="geoseg-shots-")
    try:
        scene = make_sample_scene(os.path.join(work, "data"), width=size[0], height=size[1])
        raster = QgsRasterLayer(scene.raster, "sample_scene")
        true_colour(raster)
        labels = QgsVectorLayer(scene.labels, "sample_labels", "ogr")
        QgsProject.instance().addMapLayers([raster, labels])
        chips = export_step(shots, raster, labels, work)
        chip_index_picture(shots, scene, raster, work)
        model = train_step(shots, chips, work, epochs)
        classes = segment_step(shots, raster, model, work)
        assess_step(shots, classes, labels, work)
        deps_step(shots, work)
        settings_step(shots)
    finally:
        QgsProject.instance().removeAllMapLayers()
        shutil.rmtree(work, ignore_errors=True)
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=os.path.join(REPO, "docs", "images"))
    parser.add_argument("--state", help="write what was driven and checked to this JSON file")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (tests use fewer)")
    parser.add_argument("--size", default="768x640", help="sample scene WIDTHxHEIGHT in pixels")
    args = parser.parse_args()
    if os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb" or not os.environ.get("DISPLAY"):
        sys.exit("screenshots: run under an X server with QT_QPA_PLATFORM=xcb (see `make screenshots`)")
    # a throw-away profile: the pictures show the defaults, and the user's own settings stay untouched
    profile = tempfile.mkdtemp(prefix="geoseg-shots-profile-")
    app = QgsApplication([], True, profile)
    app.initQgis()
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        shots = render_all(args.out_dir, args.epochs, (width, height))
        shots.state["settings_dir"] = QgsApplication.qgisSettingsDirPath()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if args.state:
        with open(args.state, "w", encoding="utf-8") as f:
            json.dump(shots.state, f, indent=2)
    for name in NAMES:
        print(os.path.join(args.out_dir, name))
    app.exitQgis()


if __name__ == "__main__":
    main()
