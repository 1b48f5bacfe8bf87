"""The model card schema: one message per wrong field, the published JSON Schema kept in sync,
cards of real models accepted, and untrusted model files refused before use. Pure engine."""

from __future__ import annotations

import copy
import json
import os

import onnx
import pytest
from onnx import TensorProto, helper

from geoseg.core.backends import read_model_card
from geoseg.core.card import CARD_KEY, SCHEMA, ModelCard, card_errors, card_from_json, json_schema, validate_card
from geoseg.core.checkpoint import FORMAT, load_checkpoint, save_model
from geoseg.core.errors import GeoSegError
from tests.support.helpers import REPO

SCHEMA_FILE = os.path.join(REPO, "docs", "model_card.schema.json")


def good() -> dict:
    return {
        "classes": [
            {"value": 0, "name": "background", "color": "#000000"},
            {"value": 3, "name": "water", "color": "#1f77b4"},
            {"value": 7, "name": "forest", "color": "#2CA02C"},
        ],
        "bands": [1, 2, 4],
        "in_channels": 3,
        "chip_size": 64,
        "normalization": {"mean": [10.0, 20, 30.5], "std": [1.0, 2.0, 3.0]},
        "architecture": "unet",
        "architecture_options": {"depth": 3},
        "crs": {"wkt": "PROJCS[...]", "authid": None},
        "pixel_size": [10.0, 10.0],
        "recommended": {"crop": 8, "stride": 48, "receptive_field_radius": 30},
        "metrics": {"epoch": 3, "val_miou": 0.5, "per_class_iou": {"water": None}},
        "nodata": [None, 0, -9999.5],
        "background": 0,
        "ignore_background": False,
        "dataset_sha256": "0" * 64,
        "some_writer_extension": {"anything": [1, 2]},
    }


def test_published_json_schema_is_generated_from_the_declarative_one():
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        published = json.load(f)
    assert published == json_schema(), (
        "docs/model_card.schema.json is stale: " "python -m geoseg.core.card > docs/model_card.schema.json"
    )
    assert published["required"] == ["classes", "bands", "in_channels", "chip_size", "normalization"]
    assert set(published["properties"]) == set(SCHEMA.fields)


def test_a_complete_card_is_valid_and_returned_unchanged():
    card = good()
    assert validate_card(card) is card and card == good() and card_errors(card) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["classes"][2].update(value="x"),
            "MODEL: card field classes[2].value must be an integer 0–254 (got 'x').",
        ),
        (lambda c: c["classes"][1].update(value=255), "card field classes[1].value must be an integer 0–254 (got 255)"),
        (
            lambda c: c["classes"][1].update(value=True),
            "card field classes[1].value must be an integer 0–254 (got True)",
        ),
        (
            lambda c: c["classes"][2].update(value=0),
            "card field classes[2].value repeats 0, already used by an earlier",
        ),
        (lambda c: c["classes"][0].update(color="red"), "card field classes[0].color must be a colour like #1a2b3c"),
        (
            lambda c: c["classes"][0].pop("name"),
            "card field classes[0].name is missing (it must be a non-empty string)",
        ),
        (lambda c: c["classes"].__setitem__(1, "water"), "card field classes[1] must be an object (got 'water')"),
        (
            lambda c: c.update(classes=c["classes"][:1]),
            "card field classes must be a list of at least 2 objects (got 1 item)",
        ),
        (lambda c: c.pop("chip_size"), "card field chip_size is missing (it must be an integer ≥ 8)"),
        (lambda c: c.update(chip_size=4), "card field chip_size must be an integer ≥ 8 (got 4)"),
        (lambda c: c.update(chip_size=64.0), "card field chip_size must be an integer ≥ 8 (got 64.0)"),
        (lambda c: c.update(in_channels=0), "card field in_channels must be a positive integer (got 0)"),
        (
            lambda c: c.update(bands=[1, 2]),
            "card field bands must list 3 items, one per input channel (in_channels is 3; " "got 2)",
        ),
        (lambda c: c.update(bands=[0, 1, 2]), "card field bands[0] must be a positive integer (got 0)"),
        (
            lambda c: c["normalization"].update(std=[1.0, 0.0, 2.0]),
            "card field normalization.std[1] must be a finite number > 0 (got 0.0)",
        ),
        (
            lambda c: c["normalization"].update(mean=[1.0, float("nan"), 2.0]),
            "card field normalization.mean[1] must be a finite number (got nan)",
        ),
        (lambda c: c["normalization"].update(mean=[1.0]), "card field normalization.mean must list 3 items"),
        (lambda c: c.update(normalization=[1, 2]), "card field normalization must be an object (got [1, 2])"),
        (lambda c: c["recommended"].pop("stride"), "card field recommended.stride is missing"),
        (lambda c: c["recommended"].update(crop=-1), "card field recommended.crop must be an integer ≥ 0 (got -1)"),
        (
            lambda c: c.update(pixel_size=[10.0]),
            "card field pixel_size must be a list of 2 numbers or null (got 1 item)",
        ),
        (lambda c: c.update(pixel_size=[10.0, -10.0]), "card field pixel_size[1] must be a finite number > 0"),
        (lambda c: c["crs"].update(wkt=5), "card field crs.wkt must be a string or null (got 5)"),
        (
            lambda c: c["metrics"].update(val_miou=1.5),
            "card field metrics.val_miou must be a finite number in 0–1 or null",
        ),
        (lambda c: c.update(dataset_sha256="abc"), "card field dataset_sha256 must be 64 lower-case hex digits"),
        (lambda c: c.update(ignore_background="no"), "card field ignore_background must be true or false (got 'no')"),
    ],
)
def test_each_wrong_field_is_named(change, message):
    card = good()
    change(card)
    with pytest.raises(GeoSegError) as e:
        validate_card(card)
    assert message in str(e.value) and str(e.value).startswith("MODEL: card field ")
    assert "\n" not in str(e.value)


def test_every_wrong_field_gets_a_message_up_to_a_limit():
    card = good()
    card["classes"][0]["value"] = -1
    card["chip_size"] = "big"
    card["normalization"]["std"] = [0, 0, 0]
    errors = card_errors(card)
    assert len(errors) == 5 and [e.split()[2] for e in errors] == [
        "classes[0].value",
        "chip_size",
        "normalization.std[0]",
        "normalization.std[1]",
        "normalization.std[2]",
    ]
    card["bands"] = ["a"] * 3
    with pytest.raises(GeoSegError, match=r"; and 2 more\.$"):
        validate_card(card, "RESUME")
    with pytest.raises(GeoSegError, match="^RESUME: card field classes"):
        validate_card(card, "RESUME")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "MODEL: the model card in m.onnx is not valid JSON"),
        ("[1, 2]", "MODEL: the model card must be a JSON object (got list)"),
        ('"card"', "MODEL: the model card must be a JSON object (got str)"),
        ("[" * 100000, "MODEL: the model card in m.onnx is not valid JSON"),
    ],
)
def test_not_a_card_at_all(text, message):
    with pytest.raises(GeoSegError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        card_from_json(text, "m.onnx")


def test_json_schema_agrees_with_the_validator_on_examples():
    import jsonschema  # Debian's python3-jsonschema (make setup installs it)

    validator = jsonschema.Draft202012Validator(json_schema())
    validator.check_schema(json_schema())
    assert validator.is_valid(good())
    for field, value in [("chip_size", 4), ("classes", []), ("bands", "1,2,3"), ("in_channels", True)]:
        card = {**good(), field: value}
        assert not validator.is_valid(card) and card_errors(card)


def test_card_survives_a_checkpoint_round_trip_and_a_bad_one_is_refused(tmp_path):
    import torch

    save_model(str(tmp_path / "m.pt"), {}, ModelCard.from_dict(good()))
    assert load_checkpoint(str(tmp_path / "m.pt"))["card"].to_dict() == {**good(), "schema_version": 1}
    bad = copy.deepcopy(good())
    bad["classes"][2]["value"] = "x"
    torch.save({"format": FORMAT, "card": json.dumps(bad), "state_dict": {}}, tmp_path / "bad.pt")  # a foreign writer
    with pytest.raises(GeoSegError, match=r"^MODEL: card field classes\[2\]\.value must be an integer 0–254"):
        load_checkpoint(str(tmp_path / "bad.pt"))
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # atomic writes leave no temp file


def onnx_with(card: dict | None, broken: bool = False) -> onnx.ModelProto:
    """A 1×1 convolution as ONNX; `broken`: a node reads a tensor nothing defines (parses, fails the checker)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, "h", "w"])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], [1.0, 0, 0, 0, 1, 0, 0, 0, 1])
    node = helper.make_node("Conv", ["input", "nowhere" if broken else "w"], ["logits"])
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    if card is not None:
        helper.set_model_props(model, {CARD_KEY: json.dumps(card)})
    return model


def test_untrusted_onnx_is_checked_and_its_card_validated(tmp_path):
    ok = str(tmp_path / "ok.onnx")
    onnx.save(onnx_with(good()), ok)
    assert read_model_card(ok).to_dict() == {**good(), "schema_version": 1}
    broken = str(tmp_path / "broken.onnx")
    onnx.save(onnx_with(good(), broken=True), broken)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(onnx.load(broken))
    with pytest.raises(GeoSegError, match="is not a valid ONNX model"):
        read_model_card(broken)
    card = good()
    card["normalization"]["std"][2] = -1
    wrong = str(tmp_path / "wrong.onnx")
    onnx.save(onnx_with(card), wrong)
    with pytest.raises(GeoSegError, match=r"^MODEL: card field normalization\.std\[2\] must be a finite number > 0"):
        read_model_card(wrong)
