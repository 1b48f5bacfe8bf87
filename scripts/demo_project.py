"""The demo's last step, in a real QGIS: a styled QGIS project (.qgz) with every layer of the
run, and a preview PNG (image | prediction | reference, with a legend) of the held-out scene.

Usage: demo_project.py DEMO_OUT (the folder written by scripts/demo.sh).
"""

from __future__ import annotations

import json
import os
import sys

from qgis.core import (
    QgsApplication,
    QgsFillSymbol,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QRectF, QSize, Qt
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

from geoseg.adapter.style import apply_class_style, render_layers, true_colour
from geoseg.core.raster import category_names

PANEL = QSize(420, 350)


def render(layers: list, size: QSize = PANEL) -> QImage:
    return render_layers(layers, size.width(), size.height())


def preview(image: QImage, prediction: QImage, reference: QImage, classes: list[dict], path: str, title: str) -> None:
    """Three panels side by side, titled, with the class legend underneath."""
    gap, top, legend_h = 10, 28, 40
    out = QImage(3 * PANEL.width() + 2 * gap, top + PANEL.height() + legend_h, QImage.Format_ARGB32)
    out.fill(QColor("white"))
    p = QPainter(out)
    p.setFont(QFont("DejaVu Sans", 10))
    for i, (img, label) in enumerate(((image, "image"), (prediction, "prediction"), (reference, title))):
        x = i * (PANEL.width() + gap)
        p.drawText(QRectF(x, 0, PANEL.width(), top), Qt.AlignCenter, label)
        p.drawImage(x, top, img)
    x, y = 10, top + PANEL.height() + 12
    for c in classes:
        p.fillRect(x, y, 14, 14, QColor(c["color"]))
        p.drawRect(x, y, 14, 14)
        p.drawText(x + 20, y + 12, c["name"])
        x += 30 + 8 * len(c["name"])
    p.end()
    out.save(path)


def main(out: str) -> None:
    out = os.path.abspath(out)
    project = QgsProject.instance()
    scene = QgsRasterLayer(os.path.join(out, "heldout", "sample_scene.tif"), "held-out scene")
    true_colour(scene)
    prediction = QgsRasterLayer(os.path.join(out, "heldout_classes.tif"), "held-out — GeoSeg classes")
    classes = json.load(open(os.path.join(out, "chips", "dataset.json")))["classes"]
    names = category_names(prediction.source())
    if names and any(names.get(c["value"]) != c["name"] for c in classes):
        raise SystemExit("demo_project: the class map's names differ from the training data's")
    apply_class_style(prediction, classes)
    truth = QgsRasterLayer(os.path.join(out, "heldout", "sample_truth.tif"), "held-out — reference (truth)")
    apply_class_style(truth, classes)
    labels = QgsVectorLayer(os.path.join(out, "heldout", "sample_labels.gpkg"), "held-out — label polygons", "ogr")
    labels.renderer().setSymbol(
        QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": "#222222", "outline_width": "0.2"})
    )
    train_scene = QgsRasterLayer(os.path.join(out, "data", "sample_scene.tif"), "training scene")
    true_colour(train_scene)
    chips = QgsVectorLayer(os.path.join(out, "chip_index.gpkg"), "training chips", "ogr")
    chips.renderer().setSymbol(
        QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": "#f0e442", "outline_width": "0.4"})
    )
    layers = [labels, prediction, truth, scene, chips, train_scene]
    for layer in layers:
        if not layer.isValid():
            raise SystemExit(f"demo_project: cannot open {layer.source()}")
    project.addMapLayers(layers)
    for layer in (truth, train_scene, chips):
        project.layerTreeRoot().findLayer(layer.id()).setItemVisibilityChecked(False)
    project.setCrs(scene.crs())
    qgz = os.path.join(out, "geoseg_demo.qgz")
    if not project.write(qgz):
        raise SystemExit(f"demo_project: could not write {qgz}")
    png = os.path.join(out, "preview.png")
    preview(render([scene]), render([prediction]), render([truth]), classes, png, "reference")
    print(f"wrote {png} and {qgz}")


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    main(sys.argv[1] if len(sys.argv) > 1 else "demo_output")
    QgsProject.instance().clear()
    app.exitQgis()
