"""Plugin wiring only: menu, toolbar, layer-tree action, Processing provider. Dialogs are imported when opened."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from qgis.core import Qgis, QgsApplication, QgsMapLayerType, QgsRasterLayer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMenu

HERE = os.path.dirname(__file__)


def icon(name: str) -> QIcon:
    return QIcon(os.path.join(HERE, "icons", name))


class GeoSegPlugin:
    """Created by classFactory; QGIS calls initGui()/unload()."""

    MENU_OBJECT = "mGeoSegMenu"
    TOOLBAR_OBJECT = "mGeoSegToolBar"

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider = None
        self.menu: QMenu | None = None
        self.toolbar = None
        self.actions: list[QAction] = []
        self.layer_action: QAction | None = None  # "Segment layer…" in the layer tree's context menu
        self.dialogs: dict[str, object] = {}
        self.log_handler = None

    def initProcessing(self) -> None:
        from .algorithms.provider import GeoSegProvider

        self.provider = GeoSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        from .ui import log

        self.log_handler = log.install()
        self.initProcessing()
        window = self.iface.mainWindow()
        bar = window.menuBar()
        self.menu = QMenu("&GeoSeg", bar)
        self.menu.setObjectName(self.MENU_OBJECT)
        help_menu = next((a for a in bar.actions() if a.menu() and a.menu().objectName() == "mHelpMenu"), None)
        bar.insertMenu(help_menu, self.menu) if help_menu else bar.addMenu(self.menu)
        self.toolbar = self.iface.addToolBar("GeoSeg")
        self.toolbar.setObjectName(self.TOOLBAR_OBJECT)
        self._add_action("Export training chips…", "export_chips.svg", self.open_export_dialog)
        self._add_action("Train model…", "train.svg", self.open_train_dialog)
        self._add_action("Segment raster…", "segment.svg", self.open_segment_dialog)
        self.layer_action = QAction(icon("segment.svg"), "Segment layer…", window)
        self.layer_action.triggered.connect(self.segment_active_layer)
        self.iface.addCustomActionForLayerType(self.layer_action, "", QgsMapLayerType.RasterLayer, True)

    def _add_action(self, text: str, icon_name: str, slot: Callable[[], None]) -> QAction:
        action = QAction(icon(icon_name), text, self.iface.mainWindow())
        action.triggered.connect(slot)
        self.menu.addAction(action)
        self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def open_export_dialog(self) -> None:
        self._show("export", "export_dialog", "ExportChipsDialog")

    def open_train_dialog(self) -> None:
        self._show("train", "train_dialog", "TrainDialog")

    def open_segment_dialog(self) -> None:
        self._show("segment", "segment_dialog", "SegmentDialog")

    def segment_active_layer(self) -> None:
        """The layer tree's "Segment layer…": the Segment dialog with the selected raster preselected."""
        layer = self.iface.activeLayer()
        if not isinstance(layer, QgsRasterLayer):
            self.iface.messageBar().pushMessage("GeoSeg", "Segment layer: select a raster layer first.",
                                                Qgis.Warning, 5)
            return
        self._show("segment", "segment_dialog", "SegmentDialog").set_input_layer(layer)

    def _show(self, key: str, module_name: str, class_name: str) -> object:
        """Import the dialog module (ui/<module_name>.py) on first use; one instance per session."""
        dlg = self.dialogs.get(key)
        if dlg is None:
            module = importlib.import_module(f".ui.{module_name}", __package__)
            dlg = getattr(module, class_name)(self.iface, self.iface.mainWindow())
            self.dialogs[key] = dlg
        dlg.show()
        dlg.raise_()
        dlg.activateWindow()
        return dlg

    def unload(self) -> None:
        from .ui import log

        for dlg in self.dialogs.values():
            dlg.close()
            dlg.deleteLater()
        self.dialogs.clear()
        if self.layer_action is not None:
            self.iface.removeCustomActionForLayerType(self.layer_action)
            self.layer_action.deleteLater()
            self.layer_action = None
        for action in self.actions:
            action.deleteLater()
        self.actions.clear()
        if self.menu is not None:
            self.menu.menuAction().setVisible(False)
            self.iface.mainWindow().menuBar().removeAction(self.menu.menuAction())
            self.menu.deleteLater()
            self.menu = None
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        log.uninstall(self.log_handler)
        self.log_handler = None
