"""Issue 14 in the Segment dialog: a Deepness model's derived card with its provenance; a bare model
with a CARD file; the error saying what to supply."""

from __future__ import annotations

import json

from tests.support.deepness_models import deepness_model


def test_deepness_card_shown_with_provenance(segment_dialog, tmp_path):
    dlg = segment_dialog
    dlg.modelFile.setFilePath(deepness_model(str(tmp_path / "m.onnx")))
    text = dlg.cardView.toPlainText()
    assert dlg.card is not None and [c.name for c in dlg.card.classes] == ["background", "building", "road"]
    assert "Card from Deepness metadata" in text and "from Deepness metadata" in text and "assumed" in text
    assert "tiles fixed at 256 px" in text and "seg_small_segment 7" in text


def test_bare_model_asks_for_a_card_then_uses_it(segment_dialog, layers, tmp_path):
    dlg = segment_dialog
    dlg.set_input_layer(layers["match"])
    model = deepness_model(str(tmp_path / "bare.onnx"), "logits", size=None, meta={})
    dlg.modelFile.setFilePath(model)
    assert dlg.card is None and "give CARD a JSON file with the card fields" in (dlg.card_error or "")
    example = json.loads(dlg.card_error.split("e.g. ", 1)[1])
    path = tmp_path / "card.json"
    path.write_text(json.dumps(example))
    dlg.cardFile.setFilePath(str(path))
    assert dlg.card is not None and dlg.card.num_classes == 3
    assert "from the CARD file" in dlg.cardView.toPlainText()
    dlg.outputFile.setFilePath(str(tmp_path / "out.tif"))
    assert dlg.params().card_path == str(path)
