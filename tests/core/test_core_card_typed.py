"""The typed model card (one validating constructor, the same JSON back, schema versions and
migrations) and the single helpers behind it: partial files for every output, the out-of-memory
batch-halving retry and the forward-hook memory probe. Pure engine."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os

import pytest
import torch

from geoseg.core import card as card_module
from geoseg.core.card import CARD_KEY, CardClass, ModelCard, card_errors, validate_card
from geoseg.core.checkpoint import load_checkpoint, save_model, save_onnx
from geoseg.core.errors import GeoSegError
from geoseg.core.memory import BudgetExceeded, leaf_output_bytes, retry_halving_batch
from geoseg.core.staging import atomic_write, partial_prefix, remove_stale_partials, staged_path
from tests.core.test_core_card import good


# ---------------------------------------------------------------- ModelCard
def test_from_json_builds_typed_fields_from_text_bytes_or_a_dict():
    text = json.dumps(good())
    for source in (text, text.encode("utf-8"), good()):
        c = ModelCard.from_json(source, "m.onnx")
        assert c.classes[1] == CardClass(value=3, name="water", color="#1f77b4") and c.classes[1].rgb == (31, 119, 180)
        assert c.bands == (1, 2, 4) and c.in_channels == 3 and c.chip_size == 64 and c.num_classes == 3
        assert c.normalization.mean == (10.0, 20, 30.5) and c.normalization.std == (1.0, 2.0, 3.0)
        assert (c.recommended.crop, c.recommended.stride, c.recommended.receptive_field_radius) == (8, 48, 30)
        assert c.crs.wkt == "PROJCS[...]" and c.crs.authid is None and c.pixel_size == (10.0, 10.0)
        assert c.metrics.epoch == 3 and c.metrics.val_miou == 0.5 and c.metrics.val_oa is None
        assert c.architecture == "unet" and c.architecture_options == {"depth": 3} and c.training is None
        assert c.class_names == {0: "background", 3: "water", 7: "forest"} and c.schema_version == 1
    assert ModelCard.from_json(text) == ModelCard.from_dict(good())


def test_to_json_gives_back_the_same_keys_with_unknown_ones_and_nulls():
    card = good()
    card["classes"][0]["writer_note"] = "kept"  # unknown keys at any depth survive
    card["split"] = None  # an optional key given as null stays null; an absent one stays absent
    before = copy.deepcopy(card)
    c = ModelCard.from_dict(card)
    assert c.extra == {"some_writer_extension": {"anything": [1, 2]}} and c.split is None
    assert c.to_dict() == {**card, "schema_version": 1}
    assert "training" not in c.to_dict() and c.to_dict()["split"] is None
    assert json.loads(c.to_json()) == c.to_dict()
    assert ModelCard.from_json(c.to_json()) == c  # written, read back: the same card
    assert card == before  # the input is not changed


def test_the_card_is_frozen_and_hands_out_copies():
    c = ModelCard.from_dict(good())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.chip_size = 32  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.classes[0].value = 1  # type: ignore[misc]
    c.to_dict()["architecture_options"]["depth"] = 99
    assert c.architecture_options == {"depth": 3}


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["classes"][2].update(value="x"),
        lambda c: c.pop("chip_size"),
        lambda c: c["normalization"].update(std=[1.0, 0.0, 2.0]),
        lambda c: c.update(schema_version=0),
        lambda c: c.update(schema_version="1"),
    ],
)
def test_wrong_cards_get_the_validators_messages(change):
    card = good()
    change(card)
    with pytest.raises(GeoSegError) as expected:
        validate_card(card, "RESUME")
    with pytest.raises(GeoSegError) as got:
        ModelCard.from_dict(card, "RESUME")
    assert str(got.value) == str(expected.value) and card_errors(card)
    with pytest.raises(GeoSegError, match=r"^MODEL: card field"):
        ModelCard.from_json(json.dumps(card), "m.onnx")


def test_the_classes_message_of_the_issue():
    card = good()
    card["classes"][2]["value"] = "x"
    with pytest.raises(GeoSegError, match=r"card field classes\[2\]\.value must be an integer 0–254 \(got 'x'\)"):
        ModelCard.from_json(json.dumps(card), "m.onnx")
    with pytest.raises(GeoSegError, match="^MODEL: the model card in m.onnx is not valid JSON"):
        ModelCard.from_json("{not json", "m.onnx")
    with pytest.raises(GeoSegError, match=r"^MODEL: the model card must be a JSON object \(got list\)"):
        ModelCard.from_json("[1, 2]", "m.onnx")


def test_schema_version_missing_is_1_and_is_written():
    assert "schema_version" not in good()
    c = ModelCard.from_dict(good())
    assert c.schema_version == 1 and c.to_dict()["schema_version"] == 1
    assert ModelCard.from_dict({**good(), "schema_version": 1}) == c


def test_a_card_from_a_newer_geoseg_is_refused_clearly():
    with pytest.raises(
        GeoSegError,
        match=r"^MODEL: the model card has schema_version 2, but this GeoSeg reads cards "
        r"up to version 1; update GeoSeg",
    ):
        ModelCard.from_json(json.dumps({**good(), "schema_version": 2}), "m.onnx")


def test_a_registered_migration_is_applied_before_validation(monkeypatch):
    def v1_to_v2(card: dict) -> dict:  # say version 2 renamed "chip_size" to "tile_size"
        card["tile_size"] = card.pop("chip_size")
        return card

    def v2_card(card: dict) -> dict:  # what a version-2 reader would validate: the old name is back
        card["chip_size"] = card.pop("tile_size")
        return card

    monkeypatch.setattr(card_module, "SCHEMA_VERSION", 3)
    with pytest.raises(GeoSegError, match="has schema_version 1, and this GeoSeg has no migration from it"):
        ModelCard.from_dict(good())
    monkeypatch.setitem(card_module.MIGRATIONS, 1, v1_to_v2)
    monkeypatch.setitem(card_module.MIGRATIONS, 2, v2_card)
    old = good()
    c = ModelCard.from_dict(old)
    assert c.schema_version == 3 and c.chip_size == 64 and c.to_dict()["schema_version"] == 3
    assert old == good()  # migrations work on a copy
    assert ModelCard.from_dict({**good(), "schema_version": 3}).chip_size == 64  # a current card: no migration


def test_checkpoints_hold_the_card_as_plain_json_text(tmp_path):
    path = str(tmp_path / "m.pt")
    save_model(path, {"w": torch.zeros(2)}, ModelCard.from_dict(good()))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(raw["card"], str) and json.loads(raw["card"]) == {**good(), "schema_version": 1}
    state = load_checkpoint(path)
    assert isinstance(state["card"], ModelCard) and state["card"] == ModelCard.from_dict(good())


# ---------------------------------------------------------------- partial files
def test_every_partial_follows_one_naming_convention(tmp_path):
    seen = {}
    with staged_path(str(tmp_path / "out.tif"), "OUTPUT") as tmp:
        seen["file"] = os.path.basename(tmp)
        open(tmp, "w").close()
    with staged_path(str(tmp_path / "chips"), "OUTPUT_DIR", folder=True) as tmp:
        seen["dir"] = os.path.basename(tmp)
    with atomic_write(str(tmp_path / "m.pt")) as f:
        seen["atomic"] = os.path.basename(f.name)
        f.write(b"x")
    assert seen["file"].startswith(".out.tif.partial-") and seen["file"].endswith(".tif")
    assert seen["dir"].startswith(".chips.partial-")
    assert seen["atomic"].startswith(".m.pt.partial-") and seen["atomic"].endswith(".pt")
    assert sorted(os.listdir(tmp_path)) == ["chips", "m.pt", "out.tif"]
    assert partial_prefix(str(tmp_path / "m.pt")) == ".m.pt.partial-"


def test_staged_path_refuses_or_replaces_an_existing_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(GeoSegError, match="already exists"):
        with staged_path(str(target), "OUTPUT"):
            pass
    with staged_path(str(target), "OUTPUT", replace=True) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


class Interrupted(Exception):
    pass


def test_onnx_export_writes_a_partial_that_the_stale_cleanup_finds(tmp_path, monkeypatch):
    from geoseg.models import export

    net = torch.nn.Conv2d(3, 3, 1)
    target = str(tmp_path / "model.onnx")
    written = []

    def killed_midway(model, in_channels, path, **kw):
        with open(path, "wb") as f:
            f.write(b"half an onnx file")
        written.append(os.path.basename(path))
        raise Interrupted()

    monkeypatch.setattr(export, "export_onnx", killed_midway)
    with pytest.raises(Interrupted):
        save_onnx(target, net, ModelCard.from_dict(good()))
    assert written[0].startswith(".model.onnx.partial-") and written[0].endswith(".onnx")
    assert os.listdir(tmp_path) == []  # an error removes the partial file
    (tmp_path / written[0]).write_bytes(b"left by a killed process")
    (tmp_path / ".model.pt.partial-x.pt").write_bytes(b"another file's partial")
    assert remove_stale_partials(target) == [written[0]]
    assert os.listdir(tmp_path) == [".model.pt.partial-x.pt"]


def test_save_onnx_writes_the_card_under_card_key(tmp_path):
    import onnx

    conv = torch.nn.Conv2d(3, 3, 1)
    save_onnx(str(tmp_path / "m.onnx"), conv, ModelCard.from_dict(good()))
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert ModelCard.from_json(meta[CARD_KEY]) == ModelCard.from_dict(good())
    assert os.listdir(tmp_path) == ["m.onnx"]


# ---------------------------------------------------------------- out of memory
def test_retry_halving_batch_halves_until_the_work_fits(caplog):
    calls, resets = [], []

    def work(batch: int) -> str:
        calls.append(batch)
        if batch > 2:
            raise BudgetExceeded(f"A batch of {batch} needs more")
        return f"done at {batch}"

    with caplog.at_level(logging.INFO, logger="geoseg"):
        assert retry_halving_batch(work, 8, "segmentation", resets.append) == ("done at 2", 2)
    assert calls == [8, 4, 2] and resets == [4, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "Out of memory in segmentation at batch size 8; retrying with batch size 4.",
        "Out of memory in segmentation at batch size 4; retrying with batch size 2.",
    ]


def test_retry_halving_batch_gives_up_at_one_and_passes_other_errors():
    def oom(batch: int) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(GeoSegError, match=r"Out of memory in validation even with batch size 1 \(CUDA out of memory"):
        retry_halving_batch(oom, 2, "validation")

    def broken(batch: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        retry_halving_batch(broken, 8, "training")

    def refused(batch: int) -> None:
        raise GeoSegError("Out of memory in epoch 2, and nothing to restart from.")

    with pytest.raises(GeoSegError, match="nothing to restart from"):
        retry_halving_batch(refused, 8, "training")


# ---------------------------------------------------------------- memory probe
def test_leaf_output_bytes_counts_every_leaf_output_and_removes_its_hooks():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        got = leaf_output_bytes(net, lambda: net(torch.zeros(1, 3, 8, 8)))
    assert got == (4 + 4 + 2) * 8 * 8 * 4
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(RuntimeError):
        leaf_output_bytes(net, lambda: net(torch.zeros(1, 5, 8, 8)))  # wrong channels: hooks still removed
    assert all(not m._forward_hooks for m in net.modules())
