"""The plugin's "Segment raster…" and layer-tree "Segment layer…" actions, and cancelling a
segmentation from the dialog, in a real QGIS (pytest-qgis)."""

from __future__ import annotations

import importlib
import os

import pytest
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerType,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QEvent

from geoseg.core.card import ModelCard
from geoseg.ui.segment_dialog import SegmentDialog
from tests.support.helpers import make_raster, wait_for
from tests.support.segment_fixtures import card, setup


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


def test_layer_action_runs_segmentation_and_styles_the_result(
    qgis_app, qgis_iface, qgis_processing, layers, model, tmp_path
):
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
        assert [c.label for c in layer.renderer().classes()] == [c.name for c in ModelCard.from_dict(card()).classes]
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


@pytest.fixture()
def dialog(segment_dialog):
    return segment_dialog
