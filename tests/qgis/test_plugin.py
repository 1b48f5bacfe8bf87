"""The plugin loads through classFactory in a real QGIS, and unload() removes all it added."""

from __future__ import annotations

import importlib

from qgis.core import QgsApplication, QgsMapLayerType
from qgis.PyQt.QtCore import QEvent
from qgis.PyQt.QtWidgets import QAction, QMenu, QToolBar

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
        assert [a.text() for a in menus[0].actions() if not a.isSeparator()] == [
            "Export training chips…",
            "Train model…",
            "Segment raster…",
            "Assess accuracy…",
            "Settings…",
            "Install dependencies…",
        ]
        assert [a.text() for a in menus[0].actions() if a.objectName() == "mGeoSegAssessAction"] == ["Assess accuracy…"]
        assert [type(f).__name__ for f in qgis_iface.options_factories] == ["OptionsFactory"]
        toolbar = window.findChild(QToolBar, "mGeoSegToolBar")
        assert toolbar is not None and len(toolbar.actions()) == 4
        assert [a.text() for a, *_ in qgis_iface.custom_layer_actions] == ["Segment layer…"]

        plugin.unload()
        qgis_app.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        assert registry.providerById("geoseg") is None
        assert geoseg_menus(window) == []
        assert window.findChild(QToolBar, "mGeoSegToolBar") is None
        assert plugin.actions == [] and plugin.layer_action is None
        assert window.findChild(QAction, "mGeoSegAssessAction") is None
        assert qgis_iface.custom_layer_actions == []
        assert qgis_iface.options_factories == []


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
    """ "Segment layer…" is offered in the layer tree's context menu of every raster layer (and of no
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

    code = (
        "import sys, geoseg, geoseg.plugin, geoseg.algorithms.provider; "
        "print(','.join(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_log_goes_to_message_log_while_loaded(qgis_app, qgis_iface, qgis_processing):
    """The `geoseg` logger reaches QGIS's log under the "GeoSeg" tab, and only while the plugin is loaded."""
    import logging

    from qgis.core import QgsMessageLog

    got: list[tuple[str, str]] = []

    def record(message, tag, _level):
        got.append((tag, message))

    QgsApplication.messageLog().messageReceived.connect(record)
    try:
        plugin = load(qgis_iface)
        logging.getLogger("geoseg").info("geoseg log probe 1")
        plugin.unload()
        logging.getLogger("geoseg").info("geoseg log probe 2")
        qgis_app.processEvents()
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(record)
    assert ("GeoSeg", "geoseg log probe 1") in got
    assert not [m for _, m in got if m == "geoseg log probe 2"]
    assert QgsMessageLog is not None


def test_plugin_load_puts_deps_folder_first(qgis_app, qgis_iface, qgis_processing):
    import os
    import sys

    from geoseg.ui.settings import deps_dir

    plugin = load(qgis_iface)
    try:
        stdlib = os.path.dirname(os.__file__)
        assert sys.path.index(deps_dir()) < sys.path.index(stdlib)  # first: its packages win
        assert deps_dir().endswith(f"geoseg-deps/py{sys.version_info[0]}.{sys.version_info[1]}")
        assert deps_dir().startswith(QgsApplication.qgisSettingsDirPath().rstrip("/"))
    finally:
        plugin.unload()


def test_train_without_torch_offers_the_installer(qgis_app, qgis_iface, qgis_processing, monkeypatch):
    """Train (menu) and Segment layer (layer tree) open the installer instead of the dialog when a
    package is missing; with everything present they open their dialogs."""
    import sys

    import torch  # the real module goes back afterwards: a second import of torch breaks the first one

    plugin = load(qgis_iface)
    try:
        monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
        plugin.actions[1].trigger()
        assert "train" not in plugin.dialogs
        dlg = plugin.dialogs["deps"]
        assert dlg.isVisible() and dlg.step == "train"
        assert "torch" in [dlg.missingList.item(i).text().split(" ")[0] for i in range(dlg.missingList.count())]
        assert "torch" in dlg.helpLabel.text() and "--target" in dlg.commandView.toPlainText()
        monkeypatch.setitem(sys.modules, "torch", torch)
        dlg.installed.emit()  # as after a successful install: the Train dialog the user asked for opens
        assert plugin.dialogs["train"].isVisible()
    finally:
        plugin.unload()


def test_segment_layer_action_without_onnxruntime_offers_the_installer(
    qgis_app, qgis_iface, qgis_processing, monkeypatch
):
    import sys

    plugin = load(qgis_iface)
    try:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        plugin.layer_action.trigger()
        assert "segment" not in plugin.dialogs
        dlg = plugin.dialogs["deps"]
        assert dlg.isVisible() and dlg.step == "segment" and "Segment raster" in dlg.helpLabel.text()
        assert "onnxruntime" in dlg.modules and "torch" not in dlg.modules
    finally:
        plugin.unload()


def test_load_beside_an_already_registered_provider(qgis_app, qgis_iface, qgis_processing):
    """A second GeoSeg provider is refused (and deleted) by QGIS: the plugin keeps no dead
    wrapper, and its unload still removes everything else, the log handler included."""
    from geoseg.algorithms.provider import GeoSegProvider

    registry = QgsApplication.processingRegistry()
    other = registry.providerById("geoseg")
    created = other is None
    if created:
        other = GeoSegProvider()
        assert registry.addProvider(other)
    try:
        plugin = load(qgis_iface)
        assert plugin.provider is None and registry.providerById("geoseg") is other
        plugin.unload()
        assert plugin.log_handler is None and registry.providerById("geoseg") is other
    finally:
        if created:
            registry.removeProvider(other)
