"""The three front-ends expose each step's parameters exactly as core/params.py defines them:
Processing (names, types, defaults, ranges, choices, advanced/optional flags), the command line
(flags, types, defaults, choices) and the dialogs (widgets, defaults, ranges, choices)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from geoseg.core.params import STEPS, VALUE_KINDS, schema

PROCESSING_TYPES = {
    "int": "number",
    "float": "number",
    "bool": "boolean",
    "enum": "enum",
    "string": "string",
    "json": "string",
    "extent": "extent",
    "raster": "raster",
    "vector": "source",
    "field": "field",
    "file": "file",
    "folder": "file",
    "file_out": "fileDestination",
    "folder_out": "folderDestination",
    "raster_out": "rasterDestination",
    "vector_out": "vectorDestination",
}
BIG = 1e300  # QgsProcessingParameterNumber's "no limit" is ±DBL_MAX


@pytest.mark.parametrize("step", list(STEPS))
def test_processing_matches_schema(geoseg_provider, step):
    alg = geoseg_provider.algorithm(step)
    defs = {p.name(): p for p in alg.parameterDefinitions()}
    specs = schema(STEPS[step])
    assert sorted(defs) == sorted(s.name for s in specs), "a Processing parameter is not in core/params.py"
    for s in specs:
        p = defs[s.name]
        assert p.type() == PROCESSING_TYPES[s.kind], s.name
        assert p.description() == s.meta.label, s.name
        assert bool(p.flags() & p.FlagAdvanced) == s.meta.advanced, s.name
        assert bool(p.flags() & p.FlagOptional) == s.optional, s.name
        default = None if s.required else s.default
        if s.kind in ("int", "float"):
            assert p.defaultValue() == default, s.name
            assert p.minimum() == (s.meta.minimum if s.meta.minimum is not None else p.minimum()), s.name
            assert (p.minimum() <= -BIG) == (s.meta.minimum is None), s.name
            assert (p.maximum() if p.maximum() < BIG else None) == s.meta.maximum, s.name
            assert (p.dataType() == p.Integer) == (s.kind == "int"), s.name
        elif s.kind == "enum":
            assert p.options() == list(s.labels), s.name
            assert p.defaultValue() == s.values.index(default), s.name
        elif s.kind == "bool":
            assert p.defaultValue() == default, s.name
        elif s.kind == "field":
            assert p.parentLayerParameterName() == s.meta.parent, s.name


def _subparser(step: str) -> argparse.ArgumentParser:
    from geoseg.core.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[step]


@pytest.mark.parametrize("step", list(STEPS))
def test_cli_matches_schema(step):
    actions = {a.dest: a for a in _subparser(step)._actions if a.dest != "help"}
    specs = schema(STEPS[step])
    assert sorted(actions) == sorted(s.field for s in specs), "a command-line option is not in core/params.py"
    for s in specs:
        a = actions[s.field]
        assert s.flag in a.option_strings, s.field
        assert a.required == s.required, s.field
        if s.kind == "bool":
            assert f"--no-{s.flag[2:]}" in a.option_strings and a.default == s.default, s.field
        elif s.kind == "enum":
            assert tuple(a.choices) == s.values and a.default == s.default, s.field
        elif s.kind in ("int", "float"):
            assert a.type is {"int": int, "float": float}[s.kind], s.field
            assert a.default == (None if s.required else s.default), s.field


def test_cli_defaults_build_the_dataclass_defaults():
    """Only the required options given: every other field gets the dataclass's own default."""
    from geoseg.core.cli import params_from_args

    for step, cls in STEPS.items():
        required = [x for s in schema(cls) if s.required for x in (s.flag, f"v_{s.field}")]
        p = params_from_args(cls, _subparser(step).parse_args(required))
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                assert getattr(p, f.name) == f.default, (step, f.name)
            elif f.default_factory is not dataclasses.MISSING:
                assert getattr(p, f.name) == f.default_factory(), (step, f.name)


def test_cli_keeps_old_spellings():
    from geoseg.core.cli import params_from_args
    from geoseg.core.params import ExportParams, SegmentParams, TrainParams

    p = params_from_args(
        TrainParams,
        _subparser("train").parse_args(
            [
                "--chips",
                "c",
                "--output-model",
                "m.pt",
                "--no-augment",
                "--ignore-background",
                "--weight-decay",
                "0.01",
                "--memory-budget-mb",
                "512",
                "--model-options",
                '{"depth": 3}',
            ]
        ),
    )
    assert (p.augment, p.ignore_background, p.weight_decay, p.memory_budget_mb, p.model_options) == (
        False,
        True,
        0.01,
        512.0,
        {"depth": 3},
    )
    p = params_from_args(
        ExportParams,
        _subparser("exportchips").parse_args(
            ["--input", "r.tif", "--labels", "l.gpkg", "--output-dir", "out", "--index", "i.gpkg", "--mode", "divided"]
        ),
    )
    assert (p.labels_path, p.output_dir, p.index_path, p.mode) == ("l.gpkg", "out", "i.gpkg", "divided")
    p = params_from_args(
        SegmentParams,
        _subparser("segment").parse_args(
            [
                "--input",
                "r.tif",
                "--model",
                "m.onnx",
                "--output",
                "o.tif",
                "--probabilities",
                "p.tif",
                "--memory-budget-mb",
                "64",
            ]
        ),
    )
    assert (p.probabilities_path, p.memory_budget_mb) == ("p.tif", 64.0)


def test_cli_bad_json_is_one_line(capsys):
    from geoseg.core.__main__ import main

    assert main(["train", "--chips", "c", "--output-model", "m.pt", "--model-options", "{depth: 3}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: MODEL_OPTIONS is not valid JSON") and "Traceback" not in err


# ------------------------------------------------------------------ dialogs
DIALOGS = {
    "exportchips": ("geoseg.ui.export_dialog", "ExportChipsDialog"),
    "train": ("geoseg.ui.train_dialog", "TrainDialog"),
    "segment": ("geoseg.ui.segment_dialog", "SegmentDialog"),
    "assess": ("geoseg.ui.assess_dialog", "AssessDialog"),
}


@pytest.mark.parametrize("step", list(DIALOGS))
def test_dialog_matches_schema(qgis_app, qgis_iface, step):
    from qgis.core import QgsSettings
    from qgis.PyQt.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QLineEdit

    QgsSettings().remove("geoseg")  # remembered values and GeoSeg ▸ Settings would override the defaults
    dialog = _dialog(step, qgis_iface)
    try:
        specs = schema(STEPS[step])
        assert sorted(dialog.fields) == sorted(s.field for s in specs), "a dialog widget is not in core/params.py"
        for s in specs:
            w = dialog.fields[s.field]
            if s.kind in VALUE_KINDS:  # built from the schema (ui.base_dialog.GeoSegDialog._field)
                assert w.property("geosegField") == s.field and w.toolTip() == s.meta.help, s.field
            if s.kind in ("int", "float"):
                assert isinstance(w, QAbstractSpinBox), s.field
                lo = s.meta.unset if s.meta.unset is not None else s.meta.minimum
                assert w.minimum() == pytest.approx(lo), s.field
                if s.meta.maximum is not None:
                    assert w.maximum() == pytest.approx(s.meta.maximum), s.field
                assert w.value() == pytest.approx(lo if s.default is None else s.default), s.field
            elif s.kind == "enum":
                assert isinstance(w, QComboBox), s.field
                assert [w.itemText(i) for i in range(w.count())] == list(s.labels), s.field
                assert w.currentIndex() == s.values.index(s.default), s.field
            elif s.kind == "bool" and isinstance(w, QCheckBox):
                assert w.isChecked() == s.default, s.field
            elif s.kind == "json":
                assert isinstance(w, QLineEdit) and w.text() == "", s.field
    finally:
        dialog.close()
        dialog.deleteLater()


def _dialog(step, iface):
    import importlib

    module, name = DIALOGS[step]
    return getattr(importlib.import_module(module), name)(iface)


def _raster_layer(path):
    from qgis.core import QgsProject, QgsRasterLayer

    from tests.support.helpers import make_raster

    make_raster(str(path), 40, 40, bands=3)
    layer = QgsRasterLayer(str(path), path.stem, "gdal")
    assert layer.isValid()
    return QgsProject.instance().addMapLayer(layer)


def _invalid(step, dialog, tmp_path):
    """Fill `dialog` so that core (not the dialog) refuses one parameter; return (its widget, its name).
    The other inputs are valid as far as core looks before that parameter."""
    raster = _raster_layer(tmp_path / "r.tif")
    if step == "exportchips":
        from qgis.core import QgsProject, QgsVectorLayer

        from tests.support.helpers import make_vector, utm_box

        labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 20, 20), 1)])
        dialog.inputLayer.setLayer(raster)
        dialog.labelsLayer.setLayer(
            QgsProject.instance().addMapLayer(QgsVectorLayer(labels + "|layername=labels", "labels", "ogr"))
        )
        dialog.outputDir.setFilePath(str(tmp_path / "chips"))
        dialog.maxNodata.setValue(0.0)  # the widget allows it, core.chips.validate does not
        return dialog.maxNodata, "MAX_NODATA_FRACTION"
    if step == "train":
        chips = tmp_path / "chips"
        chips.mkdir()
        for name in ("chips.csv", "dataset.json"):
            (chips / name).write_text("")
        (tmp_path / "m.pt").write_bytes(b"keep me")
        dialog.chipsDir.setFilePath(str(chips))
        dialog.outputModel.setFilePath(str(tmp_path / "m.pt"))  # core.train.validate: never overwrite
        return dialog.outputModel, "OUTPUT_MODEL"
    if step == "segment":
        (tmp_path / "out.tif").write_bytes(b"keep me")
        dialog.set_input_layer(raster)
        dialog.modelFile.setFilePath(str(tmp_path / "m.onnx"))
        dialog.outputFile.setFilePath(str(tmp_path / "out.tif"))  # core.predict.preflight: never overwrite
        return dialog.outputFile, "OUTPUT"
    (tmp_path / "r.json").write_text("keep me")
    dialog.set_layers(raster, raster)
    dialog.reportFile.setFilePath(str(tmp_path / "r.html"))  # core.assess.validate: neither report may exist
    return dialog.reportFile, "OUTPUT_REPORT"


def _clear_choice(step, dialog):
    """Make the dialog's own check (nothing chosen) fail instead; return that widget."""
    if step == "assess":
        dialog.referenceLayer.setLayer(None)
        return dialog.referenceLayer
    widget = getattr(dialog, {"exportchips": "outputDir", "train": "chipsDir", "segment": "modelFile"}[step])
    widget.setFilePath("")
    return widget


@pytest.mark.parametrize("step", list(DIALOGS))
def test_core_error_marks_its_field(qgis_app, qgis_iface, qgis_new_project, tmp_path, step):
    """A GeoSegError(param=...) raised by core's checks marks that parameter's widget (and names it in the
    message); the next refusal moves the mark to its own widget."""
    from geoseg.ui.base_dialog import FIELD_ERROR_STYLE

    dialog = _dialog(step, qgis_iface)
    try:
        widget, param = _invalid(step, dialog, tmp_path)
        assert dialog.validate_inputs() is None
        assert param in dialog.messageLabel.text(), dialog.messageLabel.text()
        assert widget.styleSheet() == FIELD_ERROR_STYLE, dialog.messageLabel.text()
        assert dialog.run() is None and dialog.task is None
        other = _clear_choice(step, dialog)
        assert dialog.validate_inputs() is None
        assert other.styleSheet() == FIELD_ERROR_STYLE and widget.styleSheet() == "", dialog.messageLabel.text()
    finally:
        dialog.close()
        dialog.deleteLater()


# ------------------------------------------------------------------ one place
def _extended(cls: type) -> type:
    """`cls` with one more parameter, written once, as a later issue would add it."""
    from geoseg.core.params import p

    extra = p(3, name="FREEZE_DEMO", label="Demo epochs with a frozen encoder", minimum=0, advanced=True)
    return dataclasses.make_dataclass(cls.__name__, [("freeze_demo", int, extra)], bases=(cls,), frozen=True)


@pytest.mark.parametrize("step", list(DIALOGS))
def test_a_parameter_added_in_one_place_reaches_every_front_end(qgis_app, qgis_iface, monkeypatch, step):
    """Only the dataclass changes: Processing, the command line and the dialog all offer the new
    parameter, and each builds the dataclass with its value."""
    import importlib

    from qgis.core import QgsSettings

    from geoseg.algorithms.base import add_parameters
    from geoseg.core.cli import add_arguments, params_from_args

    cls = _extended(STEPS[step])
    # Processing: the definition a step's algorithm adds through add_parameters
    alg = _Recorder()
    add_parameters(alg, cls)
    (demo,) = [d for d in alg.added if d.name() == "FREEZE_DEMO"]
    assert demo.defaultValue() == 3 and demo.minimum() == 0 and demo.flags() & demo.FlagAdvanced
    # command line
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    required = [x for s in schema(cls) if s.required for x in (s.flag, f"v_{s.field}")]
    assert params_from_args(cls, parser.parse_args([*required, "--freeze-demo", "5"])).freeze_demo == 5
    # dialog: no dialog code names the new field
    QgsSettings().remove("geoseg")
    module, name = DIALOGS[step]
    monkeypatch.setattr(getattr(importlib.import_module(module), name), "params_class", cls)
    dialog = _dialog(step, qgis_iface)
    try:
        widget = dialog.fields["freeze_demo"]
        assert widget.objectName() == "freezeDemo" and widget.value() == 3 and widget.minimum() == 0
        widget.setValue(7)
        assert dialog.field_values()["freeze_demo"] == 7
    finally:
        dialog.close()
        dialog.deleteLater()


class _Recorder:
    """Stands in for a QgsProcessingAlgorithm: records what add_parameters adds."""

    def __init__(self) -> None:
        self.added: list = []

    def addParameter(self, definition) -> bool:
        self.added.append(definition)
        return True

    def tr(self, text: str) -> str:
        return text
