"""Issue 14: the Segment dialog's card editor for a model with neither a GeoSeg card nor Deepness metadata:
fill it, have core refuse a wrong field by name, save, and run the model with the saved CARD."""

from __future__ import annotations

import json
import os

import numpy as np
from osgeo import gdal

from tests.support.deepness_models import deepness_model
from tests.support.helpers import run_and_wait


def _fill(editor, classes, bands="1, 2, 3", mean="0, 0, 0", std="255 255 255", chip=32):
    editor.classesTable.setRowCount(0)
    for value, name, colour in classes:
        editor.add_class(value, name, colour)
    editor.bandsEdit.setText(bands)
    editor.meanEdit.setText(mean)
    editor.stdEdit.setText(std)
    editor.chipSize.setValue(chip)


def test_card_editor_fills_saves_and_the_model_runs(segment_dialog, layers, qgis_app, tmp_path):
    from geoseg.core.foreign import card_file

    dlg = segment_dialog
    dlg.set_input_layer(layers["match"])
    model = deepness_model(str(tmp_path / "bare.onnx"), "logits", size=None, meta={})
    dlg.modelFile.setFilePath(model)
    assert dlg.card is None and dlg.cardEditorButton.isEnabled()
    editor = dlg.open_card_editor()
    assert editor.classesTable.rowCount() == 3 and editor.bandsEdit.text() == "1, 2, 3"  # prefilled from the graph

    path = str(tmp_path / "card.json")
    classes = [(0, "bare", "#aa0000"), (5, "water", "#0000ff"), (9, "forest", "#00aa00")]
    _fill(editor, classes, std="255, 0, 255")  # core refuses, naming the field; nothing written
    assert "normalization.std" in (editor.save(path) or "") and not os.path.exists(path)
    _fill(editor, classes, bands="1, 2", mean="0 0", std="255 255")  # a valid card, but not this model's
    assert "bands: 2 band(s) given, but the model's input has 3 channels" in (editor.save(path) or "")
    _fill(editor, [(0, "bare", "red"), *classes[1:]])
    assert "color" in (editor.save(path) or "")
    _fill(editor, [("x", "bare", "#aa0000"), *classes[1:]])
    assert "classes[0].value: 'x' is not a whole number" in (editor.save(path) or "")
    assert dlg.cardFile.filePath() == "" and not os.path.exists(path)

    _fill(editor, classes)
    assert editor.save(path) is None and editor.result() == editor.Accepted
    saved = json.load(open(path, encoding="utf-8"))
    assert [c["value"] for c in saved["classes"]] == [0, 5, 9] and saved["in_channels"] == 3
    assert card_file(path).class_names == {0: "bare", 5: "water", 9: "forest"}  # the file validates in core
    assert dlg.cardFile.filePath() == os.path.abspath(path)  # CARD is set ...
    assert dlg.card is not None and dlg.card.chip_size == 32  # ... and the dialog reads the card

    out = tmp_path / "classes.tif"
    dlg.outputFile.setFilePath(str(out))
    assert dlg.params().card_path == os.path.abspath(path)
    run_and_wait(dlg, qgis_app)
    assert dlg.last_error is None, dlg.last_error
    got = gdal.Open(str(out)).ReadAsArray()
    assert got.shape == (50, 70) and set(np.unique(got)) <= {0, 5, 9} and len(np.unique(got)) > 1
