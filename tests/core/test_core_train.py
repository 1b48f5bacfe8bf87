"""Training end to end on tiny chips: outputs, card, safety, cancel and resume. Pure engine."""

from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from geoseg.core.card import CARD_KEY, ModelCard
from geoseg.core.checkpoint import load_checkpoint
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.dataset import open_chips
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.train import EpochReport, TrainParams, export_model_onnx, output_paths, train
from tests.support.helpers import make_raster, make_vector, standard_labels, utm_box

TINY = {"base_width": 4, "depth": 2}


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    """12 chips of 32 px, 3 bands, classes 0-3, a quarter for validation."""
    root = tmp_path_factory.mktemp("chips")
    raster = str(root / "r.tif")
    make_raster(raster, 128, 96, bands=3, hole=(100, 70, 10, 10))
    labels = standard_labels(str(root / "l.gpkg"))
    out = str(root / "chips")
    export_chips(ExportParams(raster, labels, out, class_field="cls", chip_size=32, validation_fraction=0.25))
    return out


def params(chips: str, tmp_path, **kw) -> TrainParams:
    kw.setdefault("model_options", TINY)
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 4)
    return TrainParams(chips, str(tmp_path / "model.pt"), device="cpu", **kw)


def test_train_writes_model_onnx_metrics_and_card(chips, tmp_path):
    reports = []
    r = train(params(chips, tmp_path), report=reports.append)
    epochs = [e for e in reports if isinstance(e, EpochReport)]
    paths = output_paths(str(tmp_path / "model.pt"))
    assert (r.model_path, r.onnx_path, r.metrics_path) == (paths["model"], paths["onnx"], paths["metrics"])
    assert [e.epoch for e in epochs] == [1, 2] and r.epochs_run == 2
    with open(r.metrics_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["epoch"]) for x in rows] == [1, 2]
    assert float(rows[r.best_epoch - 1]["val_miou"]) == pytest.approx(r.val_miou, abs=1e-6)

    state = torch.load(r.model_path, map_location="cpu", weights_only=True)  # plain weights: no pickle
    assert isinstance(state["card"], str)  # plain JSON text inside the checkpoint
    card = ModelCard.from_json(state["card"])
    ds = json.load(open(os.path.join(chips, "dataset.json")))
    assert [c.to_dict() for c in card.classes] == ds["classes"] and card.bands == (1, 2, 3) and card.in_channels == 3
    assert card.chip_size == 32 and list(card.normalization.mean) == ds["normalization"]["mean"]
    assert card.architecture == "unet" and card.architecture_options["base_width"] == 4
    assert card.crs.authid == "EPSG:32633" and card.pixel_size == (2.0, 2.0)
    rec = card.recommended
    assert rec.stride == 32 - 2 * rec.crop and 0 < rec.crop <= 8 and rec.receptive_field_radius > 0
    assert card.metrics.epoch == r.best_epoch and card.training["seed"] == 0
    assert card.split["validation"] == 3 and len(card.dataset_sha256) == 64
    assert card.schema_version == 1 and r.card == card

    model = onnx.load(r.onnx_path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[CARD_KEY]) == json.loads(state["card"])

    from geoseg.models.registry import build_model

    net = build_model("unet", 3, 4, **card.architecture_options)
    net.load_state_dict(state["state_dict"])
    net.eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 48, 40)).astype(np.float32)  # not the chip size
    ref = net(torch.from_numpy(x)).detach().numpy()
    got = ort.InferenceSession(r.onnx_path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(ref - got).max() <= 1e-4


class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"format": "geoseg-checkpoint", "card": "{}", "state_dict": Payload(str(marker))}, f)
    with pytest.raises(GeoSegError, match="holds Python objects other than plain weights"):
        load_checkpoint(str(path))
    with pytest.raises(GeoSegError, match="refuses"):
        export_model_onnx(str(path), str(tmp_path / "evil.onnx"))
    assert not marker.exists() and not (tmp_path / "evil.onnx").exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(GeoSegError):
        load_checkpoint(str(raw))
    assert not marker.exists()


def test_not_a_checkpoint_and_garbled_card(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(GeoSegError, match="not a GeoSeg checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(GeoSegError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    card = {
        "classes": [],
        "bands": [1],
        "in_channels": 1,
        "chip_size": 32,
        "normalization": {"mean": [0.0], "std": [1.0]},
    }
    torch.save({"format": "geoseg-checkpoint", "card": json.dumps(card), "state_dict": {}}, tmp_path / "card.pt")
    with pytest.raises(
        GeoSegError, match=r"MODEL: card field classes must be a list of at least 2 objects " r"\(got 0 items\)"
    ):
        load_checkpoint(str(tmp_path / "card.pt"))


def batch_counter(stop_after: int):
    """A cancel check that asks to stop after `stop_after` calls, and counts the calls after that."""
    calls = {"n": 0, "after": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        if calls["n"] > stop_after:
            calls["after"] += 1
            return True
        return False

    return cancelled, calls


def test_cancel_stops_within_a_batch_and_resume_matches_uninterrupted(chips, tmp_path):
    (tmp_path / "a").mkdir()
    full = train(params(chips, tmp_path / "a", epochs=3))
    steps = 2  # 9 training chips, batch 4 → 2 batches (a last batch of 1 is dropped: BatchNorm needs 2)
    cancelled, calls = batch_counter(steps + 1 + 1)  # epoch 1 (2 train + 1 validation checks), then 1 batch
    (tmp_path / "b").mkdir()
    p = params(chips, tmp_path / "b", epochs=3)
    with pytest.raises(Cancelled, match=r"epoch 2, batch 2.*best model so far \(epoch 1"):
        train(p, cancelled=cancelled)
    assert calls["after"] == 1  # nothing ran after the cancel was seen
    paths = output_paths(p.output_model)
    assert os.path.exists(paths["model"]) and os.path.exists(paths["last"]) and not os.path.exists(paths["onnx"])
    assert load_checkpoint(paths["last"])["epoch"] == 1
    assert load_checkpoint(paths["model"])["card"].metrics.epoch == 1

    resumed = train(TrainParams(**{**p.__dict__, "resume": True}))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_miou"] == pytest.approx(b["val_miou"], abs=1e-6)
    assert os.path.exists(paths["onnx"])


def test_cancel_before_first_epoch_leaves_nothing(chips, tmp_path):
    cancelled, _ = batch_counter(1)
    with pytest.raises(Cancelled, match="nothing was written"):
        train(params(chips, tmp_path), cancelled=cancelled)
    assert os.listdir(tmp_path) == []


def test_never_overwrites_and_resume_needs_state(chips, tmp_path):
    (tmp_path / "model.onnx").write_text("mine")
    with pytest.raises(GeoSegError, match="already exists"):
        train(params(chips, tmp_path))
    assert (tmp_path / "model.onnx").read_text() == "mine"
    with pytest.raises(GeoSegError, match="no training state to resume"):
        train(params(chips, tmp_path, resume=True))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"architecture": "resnet"}, "ARCHITECTURE must be one of"),
        ({"loss": "l2"}, "LOSS must be one of"),
        ({"epochs": 0}, "EPOCHS must be at least 1"),
        ({"device": "cuda"}, "CUDA was requested"),
    ],
)
def test_bad_parameters(chips, tmp_path, kw, message):
    if kw.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so asking for it is not an error")
    p = params(chips, tmp_path)
    with pytest.raises(GeoSegError, match=message):
        train(TrainParams(**{**p.__dict__, **kw}))
    assert os.listdir(tmp_path) == []


def test_chips_folder_problems(chips, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(chips, broken)
    first = next(iter(sorted((broken / "images").iterdir())))
    first.unlink()
    with pytest.raises(GeoSegError, match="1 chip files listed in chips.csv are missing: images/"):
        open_chips(str(broken))
    with pytest.raises(GeoSegError, match="has no chips.csv"):
        open_chips(str(tmp_path))
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 64, 64, bands=2)
    one = str(tmp_path / "one")
    export_chips(
        ExportParams(
            raster,
            make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 64, 64), 1)]),
            one,
            class_field="cls",
            chip_size=32,
        )
    )
    with pytest.raises(GeoSegError, match="1 class besides the background"):
        open_chips(one, ignore_background=True)


def test_ignore_background_and_class_weights(chips, tmp_path):
    folder = open_chips(chips, ignore_background=True)
    assert [c["value"] for c in folder.classes] == [1, 2, 3]
    assert folder.lut[0] == 255 and list(folder.lut[1:4]) == [0, 1, 2] and folder.lut[255] == 255
    r = train(
        params(chips, tmp_path, epochs=1, ignore_background=True, class_weights="inverse_frequency", loss="focal")
    )
    assert [c.value for c in r.card.classes] == [1, 2, 3] and r.card.ignore_background is True


def test_bad_model_options_are_named(chips, tmp_path):
    p = params(chips, tmp_path, model_options={"base_widht": 8})
    with pytest.raises(GeoSegError, match="MODEL_OPTIONS: unknown option.*base_widht"):
        train(p)
    assert os.listdir(tmp_path) == []


def test_parse_model_options():
    from geoseg.core.params import parse_model_options

    assert parse_model_options("") == {} and parse_model_options('  {"depth": 3} ') == {"depth": 3}
    with pytest.raises(GeoSegError, match="MODEL_OPTIONS is not valid JSON"):
        parse_model_options("{depth: 3}")
    with pytest.raises(GeoSegError, match="must be a JSON object"):
        parse_model_options("[3]")


def test_batch_reports_and_early_stopping(chips, tmp_path):
    from geoseg.core.train import BatchReport

    reports = []
    # a learning rate this small cannot improve the validation mIoU: patience 1 stops after one more epoch
    r = train(params(chips, tmp_path, epochs=6, patience=1, learning_rate=1e-7, augment=False), report=reports.append)
    batches = [x for x in reports if isinstance(x, BatchReport)]
    epochs = [x for x in reports if isinstance(x, EpochReport)]
    assert r.stopped_early and r.epochs_run == len(epochs) == r.best_epoch + 1 < 6
    assert [(b.epoch, b.batch, b.batches) for b in batches[:2]] == [(1, 1, 2), (1, 2, 2)]
    assert len(batches) == 2 * r.epochs_run and all(b.loss > 0 for b in batches)


# ---------------------------------------------------------------- out of memory: halve the batch
def budget_between(chips: str, tmp_path, low: int, high: int) -> float:
    """A memory budget (MB) that fits a training step at batch `low` but not at `high`."""
    from geoseg.core.trainer import Run

    p = params(chips, tmp_path / "probe", memory_budget_mb=1e9)
    run = Run(p, open_chips(chips), "cpu")
    fits, too_big = run.step_bytes(low), run.step_bytes(high)
    assert fits < too_big
    return (fits + (run.step_bytes(low * 2) - fits) / 2) / 1e6


def test_memory_budget_halves_the_batch_and_says_so(chips, tmp_path, caplog):
    budget = budget_between(chips, tmp_path, 2, 8)
    (tmp_path / "a").mkdir()
    reports = []
    with caplog.at_level("INFO", logger="geoseg"):
        r = train(params(chips, tmp_path / "a", batch_size=8, memory_budget_mb=budget), report=reports.append)
    warnings = [x.getMessage() for x in caplog.records if x.levelname == "WARNING"]
    assert "Out of memory in training at batch size 8; retrying with batch size 4." in warnings
    assert "Out of memory in training at batch size 4; retrying with batch size 2." in warnings
    assert [e.batch_size for e in reports if isinstance(e, EpochReport)] == [2, 2]
    with open(r.metrics_path, newline="") as f:
        assert [row["batch_size"] for row in csv.DictReader(f)] == ["2", "2"]
    # the epoch restarted from its initial state: exactly the run asked for at batch 2
    (tmp_path / "b").mkdir()
    plain = train(params(chips, tmp_path / "b", batch_size=2))
    for a, b in zip(plain.history, r.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_miou"] == pytest.approx(b["val_miou"], abs=1e-9)


def test_memory_budget_from_the_environment_and_resume_keeps_the_smaller_batch(chips, tmp_path, monkeypatch, caplog):
    from geoseg.core.memory import BUDGET_ENV

    monkeypatch.setenv(BUDGET_ENV, str(budget_between(chips, tmp_path, 2, 4)))
    cancelled, _ = batch_counter(7)  # 1 check at batch 4 (over budget), epoch 1 at batch 2: 4 training + 2
    # validation checks; then cancel
    p = params(chips, tmp_path, batch_size=4, epochs=2)
    with pytest.raises(Cancelled):
        train(p, cancelled=cancelled)
    assert load_checkpoint(output_paths(p.output_model)["last"])["batch_size"] == 2
    monkeypatch.delenv(BUDGET_ENV)
    with caplog.at_level("WARNING", logger="geoseg"):
        r = train(TrainParams(**{**p.__dict__, "resume": True}))
    assert "Resuming with batch size 2" in caplog.text
    assert [h["batch_size"] for h in r.history] == [2, 2]


def test_budget_too_small_for_batch_one_is_a_clear_error(chips, tmp_path):
    with pytest.raises(
        GeoSegError,
        match=r"Out of memory in training even with batch size 1 \(A training step at "
        r"batch size 1 needs about [\d.]+ MB, over the 0.001 MB budget\)",
    ):
        train(params(chips, tmp_path, memory_budget_mb=0.001))
    assert os.listdir(tmp_path) == []
    with pytest.raises(GeoSegError, match="MEMORY_BUDGET must be 0"):
        train(params(chips, tmp_path, memory_budget_mb=-5))


def test_cuda_style_oom_in_a_later_epoch_restarts_that_epoch_at_half_the_batch(chips, tmp_path, monkeypatch, caplog):
    """An OOM raised by the forward pass (as torch.cuda.OutOfMemoryError is) in epoch 2: the epoch
    restarts from the state saved at the end of epoch 1, with batch 2."""
    from geoseg.core.trainer import Run

    forward = Run._forward
    calls = {"n": 0}

    def failing_forward(self, x):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 1: 2 training + 1 validation batch; then the first batch of epoch 2
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, x)

    monkeypatch.setattr(Run, "_forward", failing_forward)
    with caplog.at_level("WARNING", logger="geoseg"):
        r = train(params(chips, tmp_path, epochs=3))
    assert "Out of memory in training at batch size 4; retrying with batch size 2." in caplog.text
    assert [h["batch_size"] for h in r.history] == [4, 2, 2] and os.path.exists(r.onnx_path)
    assert all(np.isfinite(h["train_loss"]) for h in r.history)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_oom_in_validation_halves_only_the_validation_batch(chips, tmp_path, monkeypatch, caplog):
    from geoseg.core.trainer import Run

    forward = Run._forward
    failed = []

    def failing_forward(self, x):
        if not self.model.training and x.shape[0] > 2 and not failed:
            failed.append(x.shape[0])
            raise RuntimeError("CUDA error: out of memory")
        return forward(self, x)

    monkeypatch.setattr(Run, "_forward", failing_forward)
    with caplog.at_level("WARNING", logger="geoseg"):
        r = train(params(chips, tmp_path, epochs=1))
    assert failed == [3] and "Out of memory in validation at batch size 4; retrying with batch size 2." in caplog.text
    assert r.history[0]["batch_size"] == 4  # training itself was not affected


def test_missing_output_folder_is_created_and_removed_again_on_cancel(chips, tmp_path):
    p = TrainParams(chips, str(tmp_path / "new" / "model.pt"), device="cpu", model_options=TINY, epochs=1, batch_size=4)
    with pytest.raises(Cancelled):
        train(p, cancelled=lambda: True)
    assert os.listdir(tmp_path) == []
    r = train(p)
    assert os.path.isfile(r.model_path) and os.path.dirname(r.model_path) == str(tmp_path / "new")
