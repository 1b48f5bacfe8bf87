"""AssessDialog inside a real QGIS (pytest-qgis): layers → AssessParams → assess() in a task → the
figures and per-class table in the dialog, both reports on disk; validation, cancel, remembered values,
"Open report" and the plugin's menu entry."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QEvent, QObject, QUrl, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QAction

from geoseg.core.assess import AssessParams
from geoseg.core.errors import GeoSegError
from geoseg.core.raster import set_category_names
from geoseg.ui.assess_dialog import SETTINGS_PREFIX, TABLE_COLUMNS, AssessDialog
from geoseg.ui.base_dialog import FIELD_ERROR_STYLE
from tests.support.helpers import (
    fresh_settings,
    make_vector,
    open_dialog,
    run_and_wait,
    utm_box,
    wait_for,
    write_classes,
)

WIDGETS = (
    "predictionLayer",
    "referenceLayer",
    "classField",
    "reportFile",
    "summaryLabel",
    "classTable",
    "openReportButton",
    "messageLabel",
    "progress",
    "runButton",
    "cancelButton",
    "closeButton",
)

# reference: class 1 on the left half, class 3 on the right; the prediction calls 100 pixels of class 1
# class 3 and has 50 nodata pixels → confusion [[900, 100], [0, 950]] over 1950 pixels
OA = 1850 / 1950
IOU = (900 / 1000, 950 / 1050)
F1 = (2 * 900 / (2 * 900 + 100), 2 * 950 / (2 * 950 + 100))


def add(layer):
    assert layer.isValid(), layer.source()
    QgsProject.instance().addMapLayer(layer)
    return layer


@pytest.fixture()
def rasters(tmp_path):
    ref = np.ones((40, 50), np.uint8)
    ref[:, 25:] = 3
    pred = ref.copy()
    pred[:10, :10] = 3
    pred[30:, 45:] = 255
    pred_path = write_classes(str(tmp_path / "pred.tif"), pred, 255)
    set_category_names(pred_path, {1: "water", 3: "forest"})  # as Segment writes them
    return pred_path, write_classes(str(tmp_path / "ref.tif"), ref, None)


@pytest.fixture()
def layers(rasters, tmp_path, qgis_new_project):
    pred, ref = rasters
    polygons = make_vector(str(tmp_path / "ref.gpkg"), [(utm_box(0, 0, 25, 40), 1), (utm_box(25, 0, 50, 20), 3)])
    return {
        "pred": add(QgsRasterLayer(pred, "pred", "gdal")),
        "ref": add(QgsRasterLayer(ref, "ref", "gdal")),
        "polygons": add(QgsVectorLayer(polygons + "|layername=labels", "polygons", "ogr")),
    }


@pytest.fixture()
def dialog(qgis_app, qgis_iface):
    """A dialog on default settings; whatever settings it saved are removed after the test."""
    with fresh_settings(SETTINGS_PREFIX), open_dialog(AssessDialog, qgis_app, qgis_iface) as dlg:
        yield dlg


def setup(dlg: AssessDialog, prediction, reference, report) -> None:
    dlg.set_layers(prediction, reference)
    dlg.reportFile.setFilePath(str(report))


def assert_refused(dlg: AssessDialog, expected: str) -> None:
    assert dlg.validate_inputs() is None
    assert dlg.run() is None and dlg.task is None
    assert expected in dlg.messageLabel.text(), dlg.messageLabel.text()
    assert "c00000" in dlg.messageLabel.styleSheet()


def table(dlg: AssessDialog) -> list[list[str]]:
    t = dlg.classTable
    return [[t.item(r, c).text() for c in range(t.columnCount())] for r in range(t.rowCount())]


# ---------------------------------------------------------------- widgets
def test_constructs_with_tooltips_and_defaults(dialog, layers):
    for name in WIDGETS:
        w = dialog.findChild(object, name)
        assert w is not None, name
        assert w.toolTip(), f"{name} has no tooltip"
    assert dialog.windowTitle() == "GeoSeg — Assess accuracy"
    assert dialog.reportFile.storageMode() == QgsFileWidget.SaveFile and "*.html" in dialog.reportFile.filter()
    assert [dialog.classTable.horizontalHeaderItem(i).text() for i in range(dialog.classTable.columnCount())] == list(
        TABLE_COLUMNS
    )
    assert not dialog.openReportButton.isEnabled() and dialog.runButton.isEnabled()
    # the prediction combo lists rasters only, the reference combo rasters and polygons
    pred_layers = {dialog.predictionLayer.layer(i).name() for i in range(dialog.predictionLayer.count())}
    ref_layers = {dialog.referenceLayer.layer(i).name() for i in range(dialog.referenceLayer.count())}
    assert pred_layers == {"pred", "ref"} and ref_layers == {"pred", "ref", "polygons"}


def test_class_field_only_for_polygon_references(dialog, layers):
    dialog.show()
    dialog.set_layers(layers["pred"], layers["ref"])
    assert not dialog.classField.isVisible() and not dialog.classFieldLabel.isVisible()
    dialog.referenceLayer.setLayer(layers["polygons"])
    assert dialog.classField.isVisible() and dialog.classFieldLabel.isVisible()
    assert [dialog.classField.itemText(i) for i in range(dialog.classField.count())] == [
        "",
        "fid",
        "cls",
    ]  # integer fields only
    dialog.referenceLayer.setLayer(layers["ref"])
    assert not dialog.classField.isVisible() and dialog.classField.layer() is None


# ---------------------------------------------------------------- params and validation
def test_params_maps_widgets(dialog, layers, rasters, tmp_path):
    pred, ref = rasters
    setup(dialog, layers["pred"], layers["ref"], tmp_path / "r.html")
    assert dialog.params() == AssessParams(pred, str(tmp_path / "r.html"), reference_path=ref)
    dialog.referenceLayer.setLayer(layers["polygons"])
    dialog.classField.setField("cls")
    assert dialog.params() == AssessParams(
        pred,
        str(tmp_path / "r.html"),
        reference_vector=str(tmp_path / "ref.gpkg") + "|layername=labels",
        class_field="cls",
    )


@pytest.mark.parametrize(
    ("case", "message", "marked"),
    [
        ("no_reference", "Reference: choose", "referenceLayer"),  # the dialog's own: nothing chosen
        ("no_report", "Report: choose", "reportFile"),
        ("bad_suffix", "OUTPUT_REPORT must end in .json or .html", "reportFile"),  # core.assess.validate from here on
        ("no_class_field", "CLASS_FIELD: give the integer field of REFERENCE_VECTOR", "classField"),
        ("existing_html", "already exists", "reportFile"),
        ("existing_json", "already exists", "reportFile"),
    ],
)
def test_validation_refuses_before_starting(dialog, layers, tmp_path, case, message, marked):
    setup(dialog, layers["pred"], layers["ref"], tmp_path / "r.html")
    if case == "no_reference":
        dialog.referenceLayer.setLayer(None)
    elif case == "no_report":
        dialog.reportFile.setFilePath(" ")
    elif case == "bad_suffix":
        dialog.reportFile.setFilePath(str(tmp_path / "r.txt"))
    elif case == "no_class_field":
        dialog.referenceLayer.setLayer(layers["polygons"])
        dialog.classField.setField("")
    else:  # either of the two reports exists: both are refused, nothing is touched
        existing = tmp_path / ("r.html" if case == "existing_html" else "r.json")
        existing.write_text("keep me")
    before = sorted(os.listdir(tmp_path))
    assert_refused(dialog, message)
    assert getattr(dialog, marked).styleSheet() == FIELD_ERROR_STYLE  # the field the error is about
    assert sorted(os.listdir(tmp_path)) == before
    if case.startswith("existing"):
        assert "never overwrites" in dialog.messageLabel.text()
        assert existing.read_text() == "keep me"


def test_prediction_must_be_chosen(qgis_app, qgis_iface, tmp_path, layers):
    with fresh_settings(SETTINGS_PREFIX), open_dialog(AssessDialog, qgis_app, qgis_iface) as dlg:
        setup(dlg, None, layers["ref"], tmp_path / "r.json")
        with pytest.raises(GeoSegError, match=r"Class map \(prediction\): choose a raster layer"):
            dlg.params()


# ---------------------------------------------------------------- running
def test_run_against_a_reference_raster(dialog, layers, tmp_path, qgis_app, qgis_iface):
    setup(dialog, layers["pred"], layers["ref"], tmp_path / "report.html")
    n_success = len(qgis_iface.messageBar().get_messages(Qgis.Success))
    run_and_wait(dialog, qgis_app)

    assert dialog.last_error is None, dialog.last_error
    r = dialog.last_result
    assert r.overall_accuracy == pytest.approx(OA) and r.mean_iou == pytest.approx(sum(IOU) / 2)
    assert r.macro_f1 == pytest.approx(sum(F1) / 2) and r.confusion == [[900, 100], [0, 950]]
    assert os.path.isfile(tmp_path / "report.html") and os.path.isfile(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["confusion_matrix"]["matrix"] == [[900, 100], [0, 950]]

    summary = dialog.summaryLabel.text()
    assert f"Overall accuracy {100 * OA:.2f} %" in summary and "94.87" in summary
    assert f"mean IoU {50 * sum(IOU):.2f} %" in summary and f"macro F1 {50 * sum(F1):.2f} %" in summary
    assert "1950 pixels" in summary
    assert table(dialog) == [
        ["water", "1", "100.00", "90.00", f"{100 * F1[0]:.2f}", "90.00", "1000"],
        ["forest", "3", f"{100 * 950 / 1050:.2f}", "100.00", "95.00", f"{100 * IOU[1]:.2f}", "950"],
    ]
    messages = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert len(messages) == n_success + 1
    assert "overall accuracy 94.87 %" in messages[-1] and str(tmp_path / "report.html") in messages[-1]
    assert dialog.messageLabel.text().startswith("Assessed over 1950 pixels")
    assert dialog.progress.value() == 100 and dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()
    assert dialog.openReportButton.isEnabled()

    assert_refused(dialog, "already exists")  # the same report again is refused; the result stays shown
    assert table(dialog)[0][0] == "water"


def test_run_against_reference_polygons(dialog, layers, tmp_path, qgis_app):
    setup(dialog, layers["pred"], layers["polygons"], tmp_path / "poly.json")
    dialog.classField.setField("cls")
    run_and_wait(dialog, qgis_app)

    assert dialog.last_error is None, dialog.last_error
    # pixels outside every polygon (the lower right quarter) have no reference
    assert dialog.last_result.confusion == [[900, 100], [0, 500]]
    assert dialog.last_result.overall_accuracy == pytest.approx(1400 / 1500)
    assert f"Overall accuracy {100 * 1400 / 1500:.2f} %" in dialog.summaryLabel.text()
    assert [row[:2] for row in table(dialog)] == [["water", "1"], ["forest", "3"]]
    assert os.path.isfile(tmp_path / "poly.json") and os.path.isfile(tmp_path / "poly.html")
    assert json.loads((tmp_path / "poly.json").read_text())["class_field"] == "cls"


def test_core_error_is_reported(dialog, layers, tmp_path, qgis_app, qgis_iface):
    other = add(
        QgsRasterLayer(write_classes(str(tmp_path / "other.tif"), np.ones((40, 51), np.uint8), None), "other", "gdal")
    )
    setup(dialog, layers["pred"], other, tmp_path / "r.html")
    n_critical = len(qgis_iface.messageBar().get_messages(Qgis.Critical))
    run_and_wait(dialog, qgis_app)
    assert dialog.last_result is None and "REFERENCE is 51 × 40 pixels" in dialog.last_error
    assert len(qgis_iface.messageBar().get_messages(Qgis.Critical)) == n_critical + 1
    assert "c00000" in dialog.messageLabel.styleSheet() and dialog.classTable.rowCount() == 0
    assert not dialog.openReportButton.isEnabled()
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.json").exists()


def test_cancel_leaves_no_report(dialog, tmp_path, qgis_app, qgis_iface, qgis_new_project):
    big = np.ones((3000, 3000), np.uint8)
    big[:, 1500:] = 2
    pred = add(QgsRasterLayer(write_classes(str(tmp_path / "bp.tif"), big, 255), "bp", "gdal"))
    ref = add(QgsRasterLayer(write_classes(str(tmp_path / "br.tif"), big[::-1].copy(), None), "br", "gdal"))
    out = tmp_path / "out"
    out.mkdir()
    setup(dialog, pred, ref, out / "cancelled.html")
    n_warning = len(qgis_iface.messageBar().get_messages(Qgis.Warning))
    assert dialog.run() is not None and dialog.cancelButton.isEnabled()
    dialog.cancelButton.click()
    wait_for(dialog, qgis_app)

    assert dialog.last_result is None and dialog.last_error and "ancel" in dialog.last_error
    assert os.listdir(out) == []  # neither report, nor a staged temporary file
    assert len(qgis_iface.messageBar().get_messages(Qgis.Warning)) == n_warning + 1
    assert dialog.classTable.rowCount() == 0 and not dialog.openReportButton.isEnabled()
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


class UrlCatcher(QObject):
    """Qt's own hook for a URL scheme (QDesktopServices.setUrlHandler): no browser opens in tests."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @pyqtSlot(QUrl)
    def handle(self, url: QUrl) -> None:
        self.urls.append(url)


def test_open_report_opens_the_html(dialog, layers, tmp_path, qgis_app):
    catcher = UrlCatcher()
    QDesktopServices.setUrlHandler("file", catcher, "handle")
    try:
        assert dialog.open_report() is False  # nothing to open yet
        setup(dialog, layers["pred"], layers["ref"], tmp_path / "rep.json")
        run_and_wait(dialog, qgis_app)
        dialog.openReportButton.click()
    finally:
        QDesktopServices.unsetUrlHandler("file")
    assert [u.toLocalFile() for u in catcher.urls] == [str(tmp_path / "rep.html")]


# ---------------------------------------------------------------- settings
def test_remembered_values_restore(dialog, layers, tmp_path, qgis_iface):
    setup(dialog, layers["pred"], layers["polygons"], tmp_path / "remember.html")
    dialog.classField.setField("cls")
    assert dialog.validate_inputs() is not None
    dialog.save_settings()  # as run() does
    other = AssessDialog(qgis_iface)
    try:
        assert other.reportFile.filePath() == str(tmp_path / "remember.html")
        other.referenceLayer.setLayer(layers["polygons"])  # the remembered class field is chosen again
        assert other.classField.currentField() == "cls"
    finally:
        other.deleteLater()


def test_plugin_menu_opens_the_assess_dialog(qgis_app, qgis_iface, qgis_processing):
    import geoseg

    plugin = geoseg.classFactory(qgis_iface)
    plugin.initGui()
    try:
        action = next(a for a in plugin.actions if a.objectName() == "mGeoSegAssessAction")
        assert action.text() == "Assess accuracy…" and action in plugin.toolbar.actions()
        action.trigger()
        dlg = plugin.dialogs["assess"]
        assert isinstance(dlg, AssessDialog) and dlg.isVisible()
    finally:
        plugin.unload()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # the menu, toolbar and dialog really go
    assert qgis_iface.mainWindow().findChild(QAction, "mGeoSegAssessAction") is None
