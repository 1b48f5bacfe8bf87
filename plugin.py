"""Plugin wiring only: menu, toolbar, layer-tree action, Processing provider. Dialogs are imported when opened."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from qgis.core import Qgis, QgsApplication, QgsMapLayerType, QgsRasterLayer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMenu

from .core import deps

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
        self.options_factory = None  # GeoSeg's page in Settings ▸ Options
        self.settings_action: QAction | None = None
        self.deps_action: QAction | None = None
        self._after_install: Callable[[], None] | None = None  # what the user asked for before installing
        self.activate_deps()

    @staticmethod
    def activate_deps() -> str:
        """Put the plugin's dependencies folder first on sys.path (also in qgis_process, which never calls
        initGui), so packages the installer put there import like any other."""
        from .ui.settings import deps_dir

        folder = deps_dir()
        deps.activate(folder)
        return folder

    def initProcessing(self) -> None:
        from .algorithms.provider import GeoSegProvider

        if self.provider is not None:  # initProcessing may be called again (QGIS does, on reload)
            return
        provider = GeoSegProvider()
        # a refused duplicate (another copy of GeoSeg loaded) is deleted by QGIS: keep no dead wrapper
        if QgsApplication.processingRegistry().addProvider(provider):
            self.provider = provider

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
        self._add_action("Assess accuracy…", "geoseg.svg", self.open_assess_dialog).setObjectName("mGeoSegAssessAction")
        self.menu.addSeparator()
        self.settings_action = QAction(icon("geoseg.svg"), "Settings…", window)
        self.settings_action.setObjectName("mGeoSegSettingsAction")
        self.settings_action.triggered.connect(self.open_settings_dialog)
        self.menu.addAction(self.settings_action)
        self.deps_action = QAction("Install dependencies…", window)
        self.deps_action.setObjectName("mGeoSegInstallAction")
        self.deps_action.triggered.connect(lambda: self.open_deps_dialog("all"))
        self.menu.addAction(self.deps_action)
        from .ui.settings import OptionsFactory

        self.options_factory = OptionsFactory(lambda: self.open_deps_dialog("all"))
        self.iface.registerOptionsWidgetFactory(self.options_factory)
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
        if not self.offer_installer("train", self.open_train_dialog):
            self._show("train", "train_dialog", "TrainDialog")

    def open_segment_dialog(self) -> None:
        if not self.offer_installer("segment", self.open_segment_dialog):
            self._show("segment", "segment_dialog", "SegmentDialog")

    def open_assess_dialog(self) -> None:
        """Assessment needs numpy and GDAL only: no installer step."""
        self._show("assess", "assess_dialog", "AssessDialog")

    def open_settings_dialog(self) -> None:
        from .ui.settings import SettingsDialog

        dlg = self.dialogs.get("settings")
        if dlg is None:
            dlg = SettingsDialog(self.iface, self.iface.mainWindow(), lambda: self.open_deps_dialog("all"))
            self.dialogs["settings"] = dlg
        dlg.show()
        dlg.raise_()
        dlg.activateWindow()

    def open_deps_dialog(self, step: str) -> object:
        """The installer, told which step the user wanted (its text and list are refreshed)."""
        dlg = self._show("deps", "deps_dialog", "DepsDialog")
        dlg.set_step(step)
        return dlg

    def offer_installer(self, step: str, then: Callable[[], None] | None = None) -> bool:
        """True (and the installer shown) when `step` lacks a package; after a successful install `then` runs,
        so the user gets the dialog they asked for without restarting QGIS."""
        from .ui.deps_dialog import STEP_TITLES

        missing = deps.missing_for(step)
        if not missing:
            return False
        self._after_install = then
        dlg = self.open_deps_dialog(step)
        if not getattr(dlg, "_geoseg_connected", False):
            dlg.installed.connect(self._installed)
            dlg._geoseg_connected = True
        self.iface.messageBar().pushMessage(
            "GeoSeg",
            f"{STEP_TITLES.get(step, step)} needs {', '.join(missing)}: install them from the window "
            "that opened (GeoSeg ▸ Install dependencies…).",
            Qgis.Warning,
            10,
        )
        return True

    def _installed(self) -> None:
        then, self._after_install = self._after_install, None
        if then is not None:
            then()

    def segment_active_layer(self) -> None:
        """The layer tree's "Segment layer…": the Segment dialog with the selected raster preselected."""
        layer = self.iface.activeLayer()
        if self.offer_installer("segment", self.segment_active_layer):
            return
        if not isinstance(layer, QgsRasterLayer):
            self.iface.messageBar().pushMessage(
                "GeoSeg", "Segment layer: select a raster layer first.", Qgis.Warning, 5
            )
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
        if self.options_factory is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None
        for extra in (self.settings_action, self.deps_action):
            if extra is not None:
                extra.deleteLater()
        self.settings_action = self.deps_action = None
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
