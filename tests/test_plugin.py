"""The plugin loads through classFactory in a real QGIS, and unload() removes all it added."""

from __future__ import annotations

import importlib

from qgis.core import QgsApplication, QgsMapLayerType
from qgis.PyQt.QtCore import QEvent
from qgis.PyQt.QtWidgets import QMenu, QToolBar

PLUGIN = importlib.import_module("geoseg")


def geoseg_menus(window) -> list[QMenu]:
    return [a.menu() for a in window.menuBar().actions() if a.menu() and a.menu().objectName() == "mGeoSegMenu"]


def load(iface):
    plugin = PLUGIN.classFactory(iface)
    plugin.initGui()
    return plugin


def test_load_unload_reload(qgis_app, qgis_iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    if registry.providerById("geoseg") is not None:
        registry.removeProvider("geoseg")
    window = qgis_iface.mainWindow()
    for _ in range(2):  # load, unload, and load again
        plugin = load(qgis_iface)
        provider = registry.providerById("geoseg")
        assert provider is not None
        assert "geoseg:exportchips" in [a.id() for a in provider.algorithms()]
        menus = geoseg_menus(window)
        assert len(menus) == 1
        assert [a.text() for a in menus[0].actions()] == ["Export training chips…", "Train model…",
                                                          "Segment raster…"]
        toolbar = window.findChild(QToolBar, "mGeoSegToolBar")
        assert toolbar is not None and len(toolbar.actions()) == 3
        assert [a.text() for a, *_ in qgis_iface.custom_layer_actions] == ["Segment layer…"]

        plugin.unload()
        qgis_app.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        assert registry.providerById("geoseg") is None
        assert geoseg_menus(window) == []
        assert window.findChild(QToolBar, "mGeoSegToolBar") is None
        assert plugin.actions == [] and plugin.layer_action is None
        assert qgis_iface.custom_layer_actions == []


def test_menu_action_opens_export_dialog(qgis_app, qgis_iface, qgis_processing):
    plugin = load(qgis_iface)
    try:
        geoseg_menus(qgis_iface.mainWindow())[0].actions()[0].trigger()
        dlg = plugin.dialogs["export"]
        assert dlg.isVisible()
        assert dlg.windowTitle()
    finally:
        plugin.unload()


def test_layer_action_for_raster_layers_only(qgis_app, qgis_iface, qgis_processing):
    """"Segment layer…" is offered in the layer tree's context menu of every raster layer (and of no
    vector layer), and goes away on unload."""
    plugin = load(qgis_iface)
    try:
        registered = [entry for entry in qgis_iface.custom_layer_actions if entry[0] is plugin.layer_action]
        assert len(registered) == 1
        action, menu, layer_type, all_layers = registered[0]
        assert action.text() == "Segment layer…" and not action.icon().isNull()
        assert menu == "" and all_layers is True
        assert layer_type == QgsMapLayerType.RasterLayer and layer_type != QgsMapLayerType.VectorLayer
        assert len(qgis_iface.custom_layer_actions) == 1
    finally:
        plugin.unload()
    assert qgis_iface.custom_layer_actions == []


def test_plugin_import_does_not_load_heavy_modules():
    import subprocess
    import sys

    code = ("import sys, geoseg, geoseg.plugin, geoseg.algorithms.provider; "
            "print(','.join(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
