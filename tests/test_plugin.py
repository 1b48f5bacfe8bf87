"""The plugin loads through classFactory in a real QGIS, and unload() removes all it added."""

from __future__ import annotations

import importlib

from qgis.core import QgsApplication
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
        assert [a.text() for a in menus[0].actions()] == ["Export training chips…", "Train model…"]
        toolbar = window.findChild(QToolBar, "mGeoSegToolBar")
        assert toolbar is not None and len(toolbar.actions()) == 2

        plugin.unload()
        qgis_app.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        assert registry.providerById("geoseg") is None
        assert geoseg_menus(window) == []
        assert window.findChild(QToolBar, "mGeoSegToolBar") is None
        assert plugin.actions == []


def test_menu_action_opens_export_dialog(qgis_app, qgis_iface, qgis_processing):
    plugin = load(qgis_iface)
    try:
        geoseg_menus(qgis_iface.mainWindow())[0].actions()[0].trigger()
        dlg = plugin.dialogs["export"]
        assert dlg.isVisible()
        assert dlg.windowTitle()
    finally:
        plugin.unload()


def test_plugin_import_does_not_load_heavy_modules():
    import subprocess
    import sys

    code = ("import sys, geoseg, geoseg.plugin, geoseg.algorithms.provider; "
            "print(','.join(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
