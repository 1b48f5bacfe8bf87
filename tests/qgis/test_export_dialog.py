"""ExportChipsDialog inside a real QGIS (pytest-qgis): widgets → ExportParams → export task."""

from __future__ import annotations

import json
import os
import time

import pytest
from osgeo import gdal, ogr
from qgis.core import (
    Qgis,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsSettings,
    QgsTask,
    QgsVectorLayer,
)

from geoseg.core.chips import ExportParams
from geoseg.core.errors import GeoSegError
from geoseg.ui.base_dialog import FIELD_ERROR_STYLE
from geoseg.ui.export_dialog import SETTINGS_PREFIX, ExportChipsDialog, index_path_for
from tests.support.helpers import (
    fresh_settings,
    make_raster,
    make_vector,
    open_dialog,
    reproject,
    run_and_wait,
    set_widgets,
    utm_box,
    wait_for,
)

WIDGETS = (
    "inputLayer",
    "labelsLayer",
    "classField",
    "nameField",
    "chipSize",
    "strideX",
    "strideY",
    "mode",
    "background",
    "maxNodata",
    "validationFraction",
    "splitMethod",
    "blockSize",
    "seed",
    "outputDir",
    "indexCheck",
    "progress",
    "runButton",
    "cancelButton",
    "messageLabel",
)


# ---------------------------------------------------------------- data helpers
# Label polygons in pixel coordinates of the test raster (EPSG:32633, 2 m grid), stored in
# EPSG:4326 with an integer 'cls' and a text 'name' field.
LABELS = [(utm_box(5, 5, 40, 30), 1), (utm_box(60, 40, 110, 85), 2), (utm_box(20, 50, 45, 80), 3)]
NAMES = {1: "water", 2: "forest", 3: "urban"}
WIDE = [(utm_box(0, 0, 1500, 1500), 1)]  # for the 2000 x 2000 px raster


def raster_layer(
    path: str, width: int = 120, height: int = 90, bands: int = 3, dtype: int = gdal.GDT_UInt16
) -> QgsRasterLayer:
    """Random raster (nodata 0, values never 0) added to the project."""
    make_raster(path, width, height, bands=bands, dtype=dtype)
    return add(QgsRasterLayer(path, os.path.splitext(os.path.basename(path))[0], "gdal"))


def labels_layer(path: str, features=LABELS, names=NAMES, uri_suffix: str = "") -> QgsVectorLayer:
    """GeoPackage label layer added to the project."""
    name = os.path.splitext(os.path.basename(path))[0]
    return add(QgsVectorLayer(make_vector(path, features, names=names) + uri_suffix, name, "ogr"))


def memory_labels() -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326&field=cls:integer&field=name:string(20)", "memory labels", "memory")
    feats = []
    for wkt, value in LABELS:
        f = QgsFeature(layer.fields())
        f.setAttributes([value, NAMES[value]])
        f.setGeometry(QgsGeometry.fromWkt(reproject(wkt)))
        feats.append(f)
    assert layer.dataProvider().addFeatures(feats)[0]
    layer.updateExtents()
    return layer


def add(layer):
    assert layer.isValid(), layer.source()
    QgsProject.instance().addMapLayer(layer)
    return layer


def combo_layers(combo) -> list:
    return [combo.layer(i) for i in range(combo.count()) if combo.layer(i) is not None]


def combo_fields(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


# ---------------------------------------------------------------- fixtures
@pytest.fixture()
def layers(tmp_path, qgis_new_project):
    raster = raster_layer(str(tmp_path / "img.tif"))
    labels = labels_layer(str(tmp_path / "labels.gpkg"), uri_suffix="|layername=labels")
    return raster, labels


@pytest.fixture()
def dialog(qgis_app, qgis_iface):
    """A dialog on default settings; whatever settings it saved are removed after the test."""
    with fresh_settings(SETTINGS_PREFIX), open_dialog(ExportChipsDialog, qgis_app, qgis_iface) as dlg:
        yield dlg


def setup(dlg: ExportChipsDialog, raster, labels, out: str) -> None:
    dlg.inputLayer.setLayer(raster)
    dlg.labelsLayer.setLayer(labels)
    dlg.classField.setField("cls")
    dlg.chipSize.setValue(32)
    dlg.outputDir.setFilePath(out)


def setup_big(dlg: ExportChipsDialog, tmp_path, out_name: str):
    """A 2000 x 2000 px export (slow enough to cancel) into tmp_path / out_name, returned."""
    big = raster_layer(str(tmp_path / "big.tif"), 2000, 2000, 1, gdal.GDT_Byte)
    labels = labels_layer(str(tmp_path / "wide.gpkg"), WIDE, {1: "a"})
    out = tmp_path / out_name
    setup(dlg, big, labels, str(out))
    return out


# ---------------------------------------------------------------- tests
def test_constructs_with_filters_and_tooltips(layers, dialog):
    raster, labels = layers
    points = add(QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory"))
    for name in WIDGETS:
        w = dialog.findChild(object, name)
        assert w is not None, name
        if name != "messageLabel":
            assert w.toolTip(), f"{name} has no tooltip"
    assert combo_layers(dialog.inputLayer) == [raster]
    offered = combo_layers(dialog.labelsLayer)
    assert labels in offered and points not in offered and raster not in offered

    dialog.labelsLayer.setLayer(labels)
    assert dialog.classField.layer() is labels
    assert "cls" in combo_fields(dialog.classField) and "name" not in combo_fields(dialog.classField)
    assert "" in combo_fields(dialog.classField)  # empty = every polygon is class 1
    assert "name" in combo_fields(dialog.nameField) and "cls" not in combo_fields(dialog.nameField)

    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()
    assert dialog.chipSize.value() == 256 and dialog.strideX.value() == 0
    assert dialog.strideX.text() == "= chip size"
    assert dialog.maxNodata.value() == 1.0 and dialog.validationFraction.value() == pytest.approx(0.2)
    assert dialog.indexCheck.isChecked()
    assert not dialog.blockSize.isEnabled()
    dialog.splitMethod.setCurrentIndex(1)
    assert dialog.blockSize.isEnabled()


def test_params_maps_widgets(layers, dialog, tmp_path):
    raster, labels = layers
    out = str(tmp_path / "chips")
    setup(dialog, raster, labels, out)
    set_widgets(
        dialog,
        nameField="name",
        strideX=16,
        mode=2,
        background=7,
        maxNodata=0.5,
        validationFraction=0.3,
        splitMethod=1,
        blockSize=64,
        seed=42,
    )
    p = dialog.params()
    assert p == ExportParams(
        input_path=raster.source(),
        labels_path=f"{tmp_path / 'labels.gpkg'}|layername=labels",
        output_dir=out,
        class_field="cls",
        name_field="name",
        chip_size=32,
        stride_x=16,
        stride_y=None,
        mode="divided",
        background=7,
        max_nodata_fraction=0.5,
        validation_fraction=0.3,
        split_method="blocks",
        block_size=64,
        seed=42,
        index_path=str(tmp_path / "chips_index.gpkg"),
    )

    set_widgets(dialog, classField="", mode=1, splitMethod=0, blockSize=0, indexCheck=False)
    p = dialog.params()
    assert (p.class_field, p.mode, p.split_method, p.block_size, p.index_path) == (
        None,
        "positive",
        "random",
        None,
        None,
    )


def test_index_path_is_sibling_of_output_folder():
    assert index_path_for("/data/run1") == "/data/run1_index.gpkg"
    assert index_path_for("/data/run1/") == "/data/run1_index.gpkg"


def test_params_reports_missing_inputs(layers, dialog, tmp_path):
    raster, labels = layers
    dialog.inputLayer.setLayer(None)
    with pytest.raises(GeoSegError, match="Input raster: choose"):
        dialog.params()
    dialog.inputLayer.setLayer(raster)
    dialog.labelsLayer.setLayer(None)
    with pytest.raises(GeoSegError, match="Label polygons"):
        dialog.params()
    dialog.labelsLayer.setLayer(labels)
    dialog.outputDir.setFilePath("")
    with pytest.raises(GeoSegError, match="Output folder: choose"):
        dialog.params()

    assert dialog.run() is None and dialog.task is None
    assert "Output folder" in dialog.messageLabel.text()
    assert "c00000" in dialog.messageLabel.styleSheet()
    assert dialog.outputDir.styleSheet() == FIELD_ERROR_STYLE

    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("keep me")
    dialog.outputDir.setFilePath(str(full))
    assert dialog.validate_inputs() is None
    assert "OUTPUT_DIR" in dialog.messageLabel.text() and "not empty" in dialog.messageLabel.text()  # core's check
    assert dialog.outputDir.styleSheet() == FIELD_ERROR_STYLE  # the field the error is about
    assert (full / "old.txt").read_text() == "keep me"


def test_run_exports_and_adds_index(layers, dialog, tmp_path, qgis_app, qgis_iface):
    raster, labels = layers
    out = tmp_path / "chips"
    setup(dialog, raster, labels, str(out))
    dialog.nameField.setField("name")
    n_success = len(qgis_iface.messageBar().get_messages(Qgis.Success))
    run_and_wait(dialog, qgis_app)

    assert dialog.last_error is None, dialog.last_error
    result = dialog.last_result
    assert result is not None and result.n_chips == 12  # 120x90 px in 32 px chips: 4 x 3
    assert result.n_train + result.n_validation == 12 and result.n_validation > 0
    assert (out / "chips.csv").is_file() and (out / "dataset.json").is_file()
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["chips"] == 12 and dataset["in_channels"] == 3
    names = {c["value"]: c["name"] for c in dataset["classes"]}
    assert names == {0: "background", 1: "water", 2: "forest", 3: "urban"}
    assert len(list((out / "images").glob("*.tif"))) == 12
    assert (tmp_path / "chips_index.gpkg").is_file()

    added = QgsProject.instance().mapLayersByName("GeoSeg chips — chips")
    assert len(added) == 1 and added[0].isValid() and added[0].featureCount() == 12
    messages = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert len(messages) == n_success + 1
    assert f"Exported 12 chips ({result.n_train} train, {result.n_validation} validation) to {out}" in messages[-1]
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()
    assert dialog.progress.value() == 100
    assert "Exported 12 chips" in dialog.messageLabel.text()


def test_memory_layer_labels(layers, dialog, tmp_path, qgis_app):
    raster, _ = layers
    mem = add(memory_labels())
    out = tmp_path / "mem_chips"
    setup(dialog, raster, mem, str(out))
    dialog.indexCheck.setChecked(False)
    p = dialog.params()
    temp_gpkg = p.labels_path.split("|")[0]
    assert temp_gpkg.endswith(".gpkg") and os.path.isfile(temp_gpkg)
    dialog._remove_temp_dirs()  # params() alone leaves its copy for run(); run makes its own

    task = dialog.run()
    assert task is not None
    labels_path = task.params.labels_path.split("|")[0]
    wait_for(dialog, qgis_app)
    assert dialog.last_error is None, dialog.last_error
    assert dialog.last_result.n_chips == 12 and dialog.last_result.index_path is None
    counts = json.loads((out / "dataset.json").read_text())["class_pixel_counts"]
    assert all(counts[str(v)] > 0 for v in (1, 2, 3))
    assert not os.path.exists(labels_path), "temporary GeoPackage was not removed"
    assert not QgsProject.instance().mapLayersByName("GeoSeg chips — mem_chips")


def test_core_error_is_reported(layers, dialog, tmp_path, qgis_app, qgis_iface):
    raster, _ = layers
    labels = labels_layer(str(tmp_path / "far.gpkg"), [(utm_box(5000, 5000, 5010, 5010), 1)], {1: "far"})
    out = tmp_path / "never"
    setup(dialog, raster, labels, str(out))
    n_critical = len(qgis_iface.messageBar().get_messages(Qgis.Critical))
    assert dialog.run() is not None
    wait_for(dialog, qgis_app)
    assert dialog.last_result is None
    assert "do not overlap" in dialog.last_error
    assert "do not overlap" in dialog.messageLabel.text()
    messages = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert len(messages) == n_critical + 1 and "do not overlap" in messages[-1]
    assert not out.exists() and not (tmp_path / "never_index.gpkg").exists()
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_cancel_leaves_nothing_behind(tmp_path, qgis_new_project, dialog, qgis_app, qgis_iface):
    out = setup_big(dialog, tmp_path, "cancelled")
    n_warning = len(qgis_iface.messageBar().get_messages(Qgis.Warning))
    task = dialog.run()
    assert task is not None and dialog.cancelButton.isEnabled()
    dialog.cancelButton.click()
    wait_for(dialog, qgis_app)

    assert dialog.last_result is None
    assert dialog.last_error and "ancel" in dialog.last_error
    assert not out.exists()
    assert not (tmp_path / "cancelled_index.gpkg").exists()
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert leftovers == [], leftovers
    assert len(qgis_iface.messageBar().get_messages(Qgis.Warning)) == n_warning + 1
    assert dialog.runButton.isEnabled() and not dialog.cancelButton.isEnabled()


def test_task_status_reaches_complete(layers, dialog, tmp_path, qgis_app):
    """The task really goes through QgsApplication.taskManager() and ends Complete."""
    raster, labels = layers
    setup(dialog, raster, labels, str(tmp_path / "status"))
    task = dialog.run()
    seen = []
    task.statusChanged.connect(seen.append)
    wait_for(dialog, qgis_app)
    deadline = time.monotonic() + 10
    while QgsTask.Complete not in seen and time.monotonic() < deadline:
        qgis_app.processEvents()
    assert QgsTask.Complete in seen


def test_cancel_mid_run_removes_staging(tmp_path, qgis_new_project, dialog, qgis_app):
    """Cancelled after some chips were written: core's staging folder must disappear too."""
    out = setup_big(dialog, tmp_path, "midway")
    assert dialog.run() is not None
    deadline = time.monotonic() + 60
    while dialog.progress.value() < 2 and dialog.task is not None:
        assert time.monotonic() < deadline
        qgis_app.processEvents()
    assert dialog.task is not None, "the export finished before it could be cancelled"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".midway.partial-")], "no staging folder"
    dialog.cancel()
    wait_for(dialog, qgis_app)
    assert dialog.last_result is None and "ancel" in dialog.last_error
    assert not out.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_non_gdal_raster_is_refused(layers, dialog, tmp_path):
    raster, labels = layers
    vp = QgsRasterDataProvider.VirtualRasterParameters()
    vp.crs, vp.extent, vp.width, vp.height = raster.crs(), raster.extent(), 120, 90
    vp.formula = '"img@1" * 2'
    ref = QgsRasterDataProvider.VirtualRasterInputLayers()
    ref.name, ref.uri, ref.provider = "img", raster.source(), "gdal"
    vp.rInputLayers = [ref]
    virtual = add(QgsRasterLayer(QgsRasterDataProvider.encodeVirtualRasterProviderUri(vp), "calc", "virtualraster"))
    setup(dialog, virtual, labels, str(tmp_path / "x"))
    with pytest.raises(GeoSegError, match="virtualraster provider"):
        dialog.params()


def test_filtered_ogr_layer_is_copied(layers, dialog, tmp_path):
    """A layer filter (subset string) must reach core, so the filtered features are copied."""
    raster, labels = layers
    labels.setSubsetString('"cls" = 2')
    setup(dialog, raster, labels, str(tmp_path / "x"))
    path = dialog.params().labels_path
    assert not path.startswith(str(tmp_path))
    ds = ogr.Open(path.split("|")[0])
    lyr = ds.GetLayer(0)
    assert lyr.GetFeatureCount() == 1 and next(iter(lyr)).GetField("cls") == 2
    ds = None
    folder = os.path.dirname(path.split("|")[0])
    dialog.close()  # closing an idle dialog removes its temporary copies
    assert not os.path.exists(folder)


def test_settings_round_trip(layers, dialog, tmp_path, qgis_app, qgis_iface):
    raster, labels = layers
    out = str(tmp_path / "remembered")
    setup(dialog, raster, labels, out)
    set_widgets(
        dialog,
        strideX=20,
        strideY=24,
        mode=1,
        background=9,
        maxNodata=0.75,
        validationFraction=0.25,
        splitMethod=1,
        blockSize=48,
        seed=1234,
        indexCheck=False,
    )
    assert dialog.run() is not None  # run saves the settings
    wait_for(dialog, qgis_app)
    assert dialog.last_error is None, dialog.last_error

    again = ExportChipsDialog(qgis_iface)
    try:
        assert again.chipSize.value() == 32
        assert (again.strideX.value(), again.strideY.value()) == (20, 24)
        assert again.mode.currentIndex() == 1 and again.background.value() == 9
        assert again.maxNodata.value() == pytest.approx(0.75)
        assert again.validationFraction.value() == pytest.approx(0.25)
        assert again.splitMethod.currentIndex() == 1 and again.blockSize.isEnabled()
        assert again.blockSize.value() == 48 and again.seed.value() == 1234
        assert again.outputDir.filePath() == out
        assert not again.indexCheck.isChecked()
    finally:
        again.deleteLater()

    QgsSettings().remove(SETTINGS_PREFIX.rstrip("/"))
    fresh = ExportChipsDialog(qgis_iface)
    try:
        assert fresh.chipSize.value() == 256 and fresh.indexCheck.isChecked()
        assert fresh.outputDir.filePath() == ""
    finally:
        fresh.deleteLater()
