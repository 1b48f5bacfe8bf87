"""Regenerate the README's pictures in a real QGIS (offscreen): the export dialog filled in on
the sample scene, and the scene with the exported chip footprints coloured by split.

Run with `make screenshots`; tests call `render_all(tmp)` to keep this script working.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

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
from qgis.PyQt.QtGui import QColor

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.sample import make_sample_scene
from geoseg.ui.style import render_layers, true_colour

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _split_renderer() -> QgsCategorizedSymbolRenderer:
    cats = []
    for value, colour in (("train", "#f0e442"), ("validation", "#d55e00")):
        sym = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": colour, "outline_width": "0.6"})
        cats.append(QgsRendererCategory(value, sym, value))
    return QgsCategorizedSymbolRenderer("split", cats)


def render_map(layers: list, path: str, width: int = 768, height: int = 640) -> None:
    render_layers(layers, width, height).save(path)


def run_dialog(dlg, what: str) -> None:
    """Start a dialog's task and process events until it reports back; raise on failure."""
    import time

    if dlg.run() is None:
        raise RuntimeError(f"the {what} dialog refused to run: {dlg.messageLabel.text()}")
    deadline = time.monotonic() + 600
    while dlg.task is not None and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    if dlg.last_error:
        raise RuntimeError(dlg.last_error)


def render_train_dialog(chips: str, model: str, path: str, iface=None) -> None:
    """The Train dialog after a short real run (tiny UNet), so the plot and table are true."""
    from geoseg.ui.train_dialog import TrainDialog

    dlg = TrainDialog(iface)
    dlg.chipsDir.setFilePath(chips)
    dlg.outputModel.setFilePath(model)
    dlg.modelOptions.setText('{"base_width": 8, "depth": 3}')
    dlg.epochs.setValue(15)
    dlg.batchSize.setValue(8)
    dlg.learningRate.setValue(0.01)
    dlg.device.setCurrentIndex(1)
    dlg.resize(760, 860)
    dlg.show()
    run_dialog(dlg, "Train")
    QgsApplication.processEvents()
    dlg.grab().save(path)
    dlg.close()


def render_segment(raster: QgsRasterLayer, model: str, work: str, dialog_png: str, map_png: str, iface=None) -> None:
    """The Segment dialog showing the model card, then the class map it writes, side by side
    with the image (a real run on the sample scene)."""
    from geoseg.ui.segment_dialog import SegmentDialog

    dlg = SegmentDialog(iface)
    dlg.set_input_layer(raster)
    dlg.modelFile.setFilePath(model)
    dlg.use_recommended_tiling()
    dlg.outputFile.setFilePath(os.path.join(work, "sample_classes.tif"))
    dlg.resize(900, dlg.sizeHint().height())
    dlg.show()
    QgsApplication.processEvents()
    dlg.grab().save(dialog_png)
    run_dialog(dlg, "Segment")
    if dlg.last_layer is None:
        raise RuntimeError("no class layer was added")
    half = QSize(384, 320)
    image, classes = (os.path.join(work, n) for n in ("image.png", "classes.png"))
    render_map([raster], image, half.width(), half.height())
    render_map([dlg.last_layer], classes, half.width(), half.height())
    from qgis.PyQt.QtGui import QImage, QPainter

    canvas = QImage(2 * half.width() + 8, half.height(), QImage.Format_ARGB32)
    canvas.fill(QColor("white"))
    painter = QPainter(canvas)
    painter.drawImage(0, 0, QImage(image))
    painter.drawImage(half.width() + 8, 0, QImage(classes))
    painter.end()
    canvas.save(map_png)
    dlg.close()


def render_all(out_dir: str, iface=None) -> list[str]:
    """Write the README's pictures into out_dir; return their paths."""
    from geoseg.ui.export_dialog import ExportChipsDialog

    work = tempfile.mkdtemp(prefix="geoseg-shots-")
    scene = make_sample_scene(os.path.join(work, "data"), width=768, height=640)
    raster = QgsRasterLayer(scene.raster, "sample_scene")
    true_colour(raster)
    labels = QgsVectorLayer(scene.labels, "sample_labels", "ogr")
    QgsProject.instance().addMapLayers([raster, labels])
    paths = []
    try:
        dlg = ExportChipsDialog(iface)
        dlg.inputLayer.setLayer(raster)
        dlg.labelsLayer.setLayer(labels)
        dlg.classField.setField("class")
        dlg.nameField.setField("name")
        dlg.chipSize.setValue(128)
        dlg.strideX.setValue(64)
        dlg.strideY.setValue(64)
        dlg.splitMethod.setCurrentIndex(1)
        dlg.outputDir.setFilePath(os.path.join(os.path.expanduser("~"), "geoseg", "chips"))
        dlg.resize(560, dlg.sizeHint().height())
        dlg.show()
        QgsApplication.processEvents()
        paths.append(os.path.join(out_dir, "export_dialog.png"))
        dlg.grab().save(paths[-1])
        dlg.close()

        index = os.path.join(work, "chips_index.gpkg")
        export_chips(ExportParams(scene.raster, scene.labels, os.path.join(work, "chips"), class_field="class",
                                  chip_size=128, stride_x=128, stride_y=128, split_method="blocks",
                                  block_size=256, index_path=index))
        footprints = QgsVectorLayer(index, "chips", "ogr")
        footprints.setRenderer(_split_renderer())
        paths.append(os.path.join(out_dir, "chip_index.png"))
        render_map([footprints, raster], paths[-1])

        small = os.path.join(work, "chips64")
        export_chips(ExportParams(scene.raster, scene.labels, small, class_field="class", name_field="name",
                                  chip_size=64, stride_x=64, stride_y=64))
        paths.append(os.path.join(out_dir, "train_dialog.png"))
        render_train_dialog(small, os.path.join(work, "unet.pt"), paths[-1], iface)
        paths += [os.path.join(out_dir, "segment_dialog.png"), os.path.join(out_dir, "segment_result.png")]
        render_segment(raster, os.path.join(work, "unet.onnx"), work, paths[-2], paths[-1], iface)
    finally:
        QgsProject.instance().removeAllMapLayers()
        shutil.rmtree(work, ignore_errors=True)
    return paths


def main() -> None:
    app = QgsApplication([], True)
    app.initQgis()
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "docs", "images")
    for p in render_all(out):
        print(p)
    app.exitQgis()


if __name__ == "__main__":
    main()
