"""Cancel at every stage (export, training, segment, assess), at the first, a middle and the last
cancel check: Cancelled is raised, no output and no temporary file is left, and every file that
was there before (beside the output, and the inputs) is byte-identical. Training keeps what the
README promises: the complete files of the epochs that finished. Pure engine."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections.abc import Callable

import numpy as np
import pytest

from geoseg.core.assess import AssessParams, assess
from geoseg.core.checkpoint import load_checkpoint
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import Cancelled
from geoseg.core.predict import SegmentParams, segment
from geoseg.core.train import TrainParams, output_paths, train
from tests.support.helpers import make_raster, standard_labels, write_classes

TINY = {"base_width": 4, "depth": 2}
POINTS = ("start", "middle", "end")


def hashes(*paths: str) -> dict[str, str]:
    """sha256 of every file under the given files/folders (hidden ones included)."""
    out = {}
    for path in paths:
        files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        for f in files:
            with open(f, "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


_POLLS: dict[str, int] = {}


def count_polls(run: Callable[[Callable[[], bool]], object], key: str) -> int:
    """How many times an uncancelled run asks whether to stop (counted once per `key`)."""
    if key in _POLLS:
        return _POLLS[key]
    n = [0]

    def never() -> bool:
        n[0] += 1
        return False

    run(never)
    _POLLS[key] = n[0]
    return n[0]


def cancel_at(k: int) -> Callable[[], bool]:
    """A cancel check that answers False k times, then True (k = 0: at the first check)."""
    n = [0]

    def cancelled() -> bool:
        n[0] += 1
        return n[0] > k

    return cancelled


def poll_index(point: str, total: int) -> int:
    return {"start": 0, "middle": total // 2, "end": total - 1}[point]


def folder_with_bystanders(path) -> dict[str, str]:
    """A folder holding files that must survive whatever happens beside them."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine, do not touch\n")
    (path / "old_model.pt").write_bytes(os.urandom(2048))
    (path / ".hidden_config").write_text("x=1\n")
    return hashes(str(path))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A raster, its labels, chips and a tiny trained model (.pt and .onnx)."""
    root = tmp_path_factory.mktemp("cancel")
    raster = str(root / "r.tif")
    make_raster(raster, 128, 96, bands=3, hole=(100, 70, 10, 10))
    labels = standard_labels(str(root / "l.gpkg"))
    chips = str(root / "chips")
    export_chips(ExportParams(raster, labels, chips, class_field="cls", chip_size=32, validation_fraction=0.25))
    (root / "m").mkdir()
    r = train(TrainParams(chips, str(root / "m" / "m.pt"), epochs=1, batch_size=4, device="cpu", model_options=TINY))
    return {"root": root, "raster": raster, "labels": labels, "chips": chips, "pt": r.model_path, "onnx": r.onnx_path}


def assert_untouched(before: dict[str, str], folder, *inputs: str, inputs_before: dict[str, str]) -> None:
    assert hashes(str(folder)) == before, "the output folder holds exactly what it held before"
    assert hashes(*inputs) == inputs_before, "the inputs are byte-identical"


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("point", POINTS)
def test_cancel_export(inputs, tmp_path, point):
    def run(cancelled, out):
        return export_chips(
            ExportParams(
                inputs["raster"],
                inputs["labels"],
                str(out / "chips"),
                class_field="cls",
                chip_size=32,
                stride_x=16,
                stride_y=16,
                index_path=str(out / "index.gpkg"),
            ),
            cancelled=cancelled,
        )

    total = count_polls(lambda c: run(c, tmp_path / "probe"), "export")
    assert total > 10  # one check per grid chip, then before the index and before the final rename
    out = tmp_path / "out"
    before = folder_with_bystanders(out)
    (out / "chips").mkdir()  # an existing empty OUTPUT_DIR stays as it was
    ins = hashes(inputs["raster"], inputs["labels"])
    with pytest.raises(Cancelled):
        run(cancel_at(poll_index(point, total)), out)
    assert sorted(os.listdir(out)) == [".hidden_config", "chips", "notes.txt", "old_model.pt"]
    assert os.listdir(out / "chips") == []
    assert_untouched(before, out, inputs["raster"], inputs["labels"], inputs_before=ins)


# ---------------------------------------------------------------- segment
@pytest.mark.parametrize("model", ["pt", "onnx"])
@pytest.mark.parametrize("point", POINTS)
def test_cancel_segment(inputs, tmp_path, point, model):
    def run(cancelled, out):
        return segment(
            SegmentParams(
                inputs["raster"],
                inputs[model],
                str(out / "classes.tif"),
                str(out / "probabilities.tif"),
                chip_size=32,
                stride_x=16,
                stride_y=16,
                crop=8,
                batch_size=2,
            ),
            cancelled=cancelled,
        )

    (tmp_path / "probe").mkdir()
    total = count_polls(lambda c: run(c, tmp_path / "probe"), model)
    assert total > 5
    out = tmp_path / "out"
    before = folder_with_bystanders(out)
    ins = hashes(inputs["raster"], inputs[model])
    with pytest.raises(Cancelled):
        run(cancel_at(poll_index(point, total)), out)
    assert_untouched(before, out, inputs["raster"], inputs[model], inputs_before=ins)


# ---------------------------------------------------------------- assess
@pytest.fixture(scope="module")
def class_rasters(tmp_path_factory):
    """A prediction and a reference tall enough for several streamed strips."""
    root = tmp_path_factory.mktemp("assess")
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 4, (700, 30)).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.8, ref, (ref + 1) % 4).astype(np.uint8)
    return (write_classes(str(root / "pred.tif"), pred, 255), write_classes(str(root / "ref.tif"), ref, 255))


@pytest.mark.parametrize("point", POINTS)
def test_cancel_assess(class_rasters, tmp_path, point):
    pred, ref = class_rasters

    def run(cancelled, out):
        return assess(AssessParams(pred, str(out / "report.json"), reference_path=ref), cancelled=cancelled)

    (tmp_path / "probe").mkdir()
    total = count_polls(lambda c: run(c, tmp_path / "probe"), "assess")
    assert total == 4  # 3 strips of 256 rows, then once more with both reports written but not yet renamed
    out = tmp_path / "out"
    before = folder_with_bystanders(out)
    ins = hashes(pred, ref)
    with pytest.raises(Cancelled):
        run(cancel_at(poll_index(point, total)), out)
    assert_untouched(before, out, pred, ref, inputs_before=ins)


# ---------------------------------------------------------------- training
def tparams(chips: str, out, **kw) -> TrainParams:
    return TrainParams(chips, str(out / "model.pt"), device="cpu", batch_size=4, model_options=TINY, **kw)


def run_files(out) -> dict[str, str]:
    return {k: v for k, v in output_paths(str(out / "model.pt")).items() if os.path.exists(v)}


def assert_complete_epochs(out, epochs: int) -> None:
    """The run's files are whole and agree: .last.pt at `epochs`, one metrics row per epoch, no ONNX."""
    files = run_files(out)
    if epochs == 0:
        assert files == {}
        return
    assert sorted(files) == ["last", "metrics", "model"]
    last = load_checkpoint(files["last"])
    assert last["epoch"] == epochs and len(last["history"]) == epochs
    assert 1 <= load_checkpoint(files["model"])["card"].metrics.epoch <= epochs
    with open(files["metrics"], newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, epochs + 1))


POLLS_PER_EPOCH = 3  # 9 training chips at batch 4: 2 batches (the last chip is dropped), 3 validation chips: 1


@pytest.mark.parametrize("point", POINTS)
def test_cancel_training(inputs, tmp_path, point):
    total = 2 * POLLS_PER_EPOCH
    (tmp_path / "probe").mkdir()
    probe = tparams(inputs["chips"], tmp_path / "probe", epochs=2)
    assert count_polls(lambda c: train(probe, cancelled=c), "train") == total
    out = tmp_path / "out"
    before = folder_with_bystanders(out)
    ins = hashes(inputs["chips"])
    k = poll_index(point, total)
    with pytest.raises(Cancelled):
        train(tparams(inputs["chips"], out, epochs=2), cancelled=cancel_at(k))
    assert_complete_epochs(out, k // POLLS_PER_EPOCH)  # before the first epoch ends: nothing at all
    bystanders = {f: h for f, h in hashes(str(out)).items() if not os.path.basename(f).startswith("model.")}
    assert bystanders == before
    assert [n for n in os.listdir(out) if n.startswith(".") and n != ".hidden_config"] == []
    assert hashes(inputs["chips"]) == ins


@pytest.fixture(scope="module")
def interrupted(inputs, tmp_path_factory):
    """A 3-epoch run cancelled after its first epoch: the files a resumed run starts from."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Cancelled):
        train(tparams(inputs["chips"], out, epochs=3), cancelled=cancel_at(POLLS_PER_EPOCH))
    assert_complete_epochs(out, 1)
    return out


@pytest.mark.parametrize("point", POINTS)
def test_cancel_resumed_training_keeps_or_completes_the_checkpoint(inputs, interrupted, tmp_path, point):
    out = tmp_path / "out"
    shutil.copytree(interrupted, out)
    (out / "notes.txt").write_text("mine\n")
    before = hashes(str(out))
    ins = hashes(inputs["chips"])
    total = 2 * POLLS_PER_EPOCH  # epochs 2 and 3
    k = poll_index(point, total)
    with pytest.raises(Cancelled, match="train again with RESUME"):
        train(tparams(inputs["chips"], out, epochs=3, resume=True), cancelled=cancel_at(k))
    done = 1 + k // POLLS_PER_EPOCH
    assert_complete_epochs(out, done)
    after = hashes(str(out))
    assert sorted(after) == sorted(before) and [n for n in os.listdir(out) if n.startswith(".")] == []
    if done == 1:  # cancelled within the first resumed epoch: nothing changed at all
        assert after == before
    else:  # updated only to the complete newer state
        last = str(out / "model.last.pt")
        assert after[last] != before[last] and after[str(out / "notes.txt")] == before[str(out / "notes.txt")]
        resumed = train(tparams(inputs["chips"], out, epochs=3, resume=True))
        assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert hashes(inputs["chips"]) == ins
