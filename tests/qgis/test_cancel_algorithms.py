"""Cancel every Processing algorithm through QgsProcessingFeedback.cancel(), as the Processing
dialog's Cancel button does: the run stops with a message, leaves no output and no temporary
file, and every file that was there before (inputs included) is byte-identical."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from geoseg.core.checkpoint import load_checkpoint
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.train import TrainParams, train
from tests.support.helpers import make_raster, standard_labels, write_classes

TINY = {"base_width": 4, "depth": 2}


def hashes(*paths: str) -> dict[str, str]:
    out = {}
    for path in map(str, paths):
        files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        for f in files:
            with open(f, "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


def cancelling_feedback(after: int) -> QgsProcessingFeedback:
    """A feedback that cancels itself at its `after`-th progress report (what a user's click does)."""
    feedback = QgsProcessingFeedback()
    seen = [0]

    def on_progress(_value: float) -> None:
        seen[0] += 1
        if seen[0] == after:
            feedback.cancel()

    feedback.progressChanged.connect(on_progress)
    feedback.on_progress = on_progress  # keep the slot alive as long as the feedback
    return feedback


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cancelalg")
    raster = str(root / "r.tif")
    make_raster(raster, 128, 96, bands=3)
    labels = standard_labels(str(root / "l.gpkg"))
    chips = str(root / "chips")
    export_chips(ExportParams(raster, labels, chips, class_field="cls", chip_size=32, validation_fraction=0.25))
    (root / "m").mkdir()
    model = train(
        TrainParams(chips, str(root / "m" / "m.pt"), epochs=1, batch_size=4, device="cpu", model_options=TINY)
    ).onnx_path
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, (600, 40)).astype(np.uint8)
    pred = write_classes(str(root / "pred.tif"), (ref + (rng.random(ref.shape) < 0.2)) % 3, 255)
    return {
        "raster": raster,
        "labels": labels,
        "chips": chips,
        "model": model,
        "pred": pred,
        "ref": write_classes(str(root / "ref.tif"), ref, 255),
    }


def out_folder(tmp_path) -> tuple[str, dict[str, str]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a file of mine\n")
    (out / "old.tif").write_bytes(os.urandom(1000))
    return str(out), hashes(out)


def run_cancelled(alg: str, params: dict, after: int) -> str:
    import processing

    with pytest.raises(QgsProcessingException) as e:
        processing.run(alg, params, feedback=cancelling_feedback(after))
    return str(e.value)


@pytest.mark.parametrize("after", [1, 40])
def test_cancel_exportchips(geoseg_provider, data, tmp_path, after):
    out, before = out_folder(tmp_path)
    ins = hashes(data["raster"], data["labels"])
    message = run_cancelled(
        "geoseg:exportchips",
        {
            "INPUT": data["raster"],
            "LABELS": data["labels"],
            "CLASS_FIELD": "cls",
            "CHIP_SIZE": 32,
            "STRIDE_X": 8,
            "STRIDE_Y": 8,
            "OUTPUT_DIR": os.path.join(out, "chips"),
            "INDEX": os.path.join(out, "index.gpkg"),
        },
        after,
    )
    assert "Cancelled" in message
    assert hashes(out) == before and sorted(os.listdir(out)) == ["keep.txt", "old.tif"]
    assert hashes(data["raster"], data["labels"]) == ins


@pytest.mark.parametrize("after", [1, 3])
def test_cancel_train(geoseg_provider, data, tmp_path, after):
    out, before = out_folder(tmp_path)
    ins = hashes(data["chips"])
    message = run_cancelled(
        "geoseg:train",
        {
            "CHIPS": data["chips"],
            "OUTPUT_MODEL": os.path.join(out, "m.pt"),
            "EPOCHS": 2,
            "BATCH_SIZE": 4,
            "DEVICE": 1,
            "MODEL_OPTIONS": json.dumps(TINY),
        },
        after,
    )
    assert "Training cancelled in epoch" in message
    mine = {f: h for f, h in hashes(out).items() if not os.path.basename(f).startswith("m.")}
    assert mine == before and not any(n.startswith(".") for n in os.listdir(out))
    if after == 1:  # in the first epoch: nothing
        assert sorted(os.listdir(out)) == ["keep.txt", "old.tif"]
        assert "nothing was written" in message
    else:  # in the second: the first epoch's complete files, no ONNX
        assert sorted(os.listdir(out)) == ["keep.txt", "m.last.pt", "m.metrics.csv", "m.pt", "old.tif"]
        assert load_checkpoint(os.path.join(out, "m.last.pt"))["epoch"] == 1
        with open(os.path.join(out, "m.metrics.csv"), newline="") as f:
            assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]
    assert hashes(data["chips"]) == ins


@pytest.mark.parametrize("after", [1, 5])
def test_cancel_segment(geoseg_provider, data, tmp_path, after):
    out, before = out_folder(tmp_path)
    ins = hashes(data["raster"], data["model"])
    message = run_cancelled(
        "geoseg:segment",
        {
            "INPUT": data["raster"],
            "MODEL": data["model"],
            "CHIP_SIZE": 32,
            "STRIDE_X": 16,
            "STRIDE_Y": 16,
            "CROP": 8,
            "BATCH_SIZE": 1,
            "OUTPUT": os.path.join(out, "classes.tif"),
            "OUTPUT_PROBABILITIES": os.path.join(out, "probabilities.tif"),
        },
        after,
    )
    assert "Cancelled" in message
    assert hashes(out) == before and sorted(os.listdir(out)) == ["keep.txt", "old.tif"]
    assert hashes(data["raster"], data["model"]) == ins


@pytest.mark.parametrize("after", [1, 2])
def test_cancel_assess(geoseg_provider, data, tmp_path, after):
    out, before = out_folder(tmp_path)
    ins = hashes(data["pred"], data["ref"])
    message = run_cancelled(
        "geoseg:assess",
        {"PREDICTION": data["pred"], "REFERENCE": data["ref"], "OUTPUT_REPORT": os.path.join(out, "report.html")},
        after,
    )
    assert "Cancelled" in message
    assert hashes(out) == before and sorted(os.listdir(out)) == ["keep.txt", "old.tif"]
    assert hashes(data["pred"], data["ref"]) == ins
