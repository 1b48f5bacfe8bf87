"""Styling what segmentation writes: the class raster and its polygons get the model card's colours
and names, the probabilities a 0..1 grey ramp. Qt/QGIS only (no torch, no numpy)."""

from __future__ import annotations

import os

from qgis.core import (
    QgsContrastEnhancement,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
)
from qgis.PyQt.QtGui import QColor

CLASSES_SUFFIX = " — GeoSeg classes"
PROBABILITIES_SUFFIX = " — GeoSeg probabilities"
POLYGONS_SUFFIX = " — GeoSeg polygons"


def class_layer_name(output_path: str, input_name: str | None = None) -> str:
    """'<input layer name> — GeoSeg classes'; without an input name, the output file's stem stands in."""
    base = input_name or os.path.splitext(os.path.basename(output_path))[0]
    return base + CLASSES_SUFFIX


def probabilities_layer_name(probabilities_path: str, input_name: str | None = None) -> str:
    base = input_name or os.path.splitext(os.path.basename(probabilities_path))[0]
    return base + PROBABILITIES_SUFFIX


def apply_class_style(layer: QgsRasterLayer, classes: list[dict]) -> None:
    """Paletted renderer on band 1: one entry per card class (value, colour, name), in card order.

    Pixels of other values (255 = nodata) stay transparent."""
    entries = [QgsPalettedRasterRenderer.Class(float(c["value"]), QColor(c["color"]), str(c["name"])) for c in classes]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def apply_vector_class_style(layer, classes: list[dict], field: str = "value") -> None:
    """Categorized fill on the polygons' class `field` (OUTPUT_VECTOR): one category per card class with
    its colour and name, thin outlines of the same colour, in card order."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory

    categories = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({"color": c["color"], "outline_color": c["color"], "outline_width": "0.1"})
        categories.append(QgsRendererCategory(int(c["value"]), symbol, str(c["name"])))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    layer.triggerRepaint()


def polygons_layer_name(vector_path: str, input_name: str | None = None) -> str:
    base = input_name or os.path.splitext(os.path.basename(vector_path))[0]
    return base + POLYGONS_SUFFIX


def style_probabilities(layer: QgsRasterLayer, band: int = 1) -> None:
    """Single-band grey over the fixed probability range 0..1 (black 0, white 1)."""
    renderer = QgsSingleBandGrayRenderer(layer.dataProvider(), band)
    enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
    enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    enhancement.setMinimumValue(0.0)
    enhancement.setMaximumValue(1.0)
    renderer.setContrastEnhancement(enhancement)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def true_colour(layer: QgsRasterLayer, red: int = 3, green: int = 2, blue: int = 1) -> None:
    """An RGB view of a multiband image (the sample scene is blue, green, red, NIR: 3-2-1),
    stretched to its 2-98 % cumulative range."""
    from qgis.core import QgsContrastEnhancement, QgsRasterMinMaxOrigin

    renderer = layer.renderer()
    renderer.setRedBand(red)
    renderer.setGreenBand(green)
    renderer.setBlueBand(blue)
    layer.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum, QgsRasterMinMaxOrigin.CumulativeCut)


def render_layers(layers: list, width: int, height: int):
    """A QImage of `layers` (first on top) over the extent and CRS of the last one."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(layers[-1].extent())
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()
