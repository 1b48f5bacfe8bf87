"""A training run killed with SIGKILL resumes from its last checkpoint and, on the CPU with the
same seed, continues exactly as the uninterrupted run; a kill in the middle of writing a
checkpoint leaves the previous one whole; a damaged checkpoint is refused with a clear message.

The child process stops itself at a chosen point (it waits there to be killed) so that the kill
lands at a known moment without any timing in the test. Where equality holds: on the CPU in
one torch build (tested here without DataLoader workers; workers should not matter, as the
dataset draws no random numbers and shuffling and augmentation use generators saved in the
checkpoint). It does not hold on CUDA with non-deterministic kernels (atomics in convolution
backward, scatter): there the resumed losses can differ in the last digits (not tested: no GPU).
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from geoseg.core.checkpoint import load_checkpoint
from geoseg.core.errors import GeoSegError
from geoseg.core.train import TrainParams, output_paths, train
from tests.support.chips import make_chips

EPOCHS = 4
TINY = {"base_width": 4, "depth": 2}

CHILD = r"""
import os, sys, time
import torch
from geoseg.core.train import EpochReport, TrainParams, train

chips, model, mode, marker = sys.argv[1:5]
seen = {"epoch": 0, "polls": 0}


def wait_to_be_killed():
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def report(r):
    if isinstance(r, EpochReport):
        seen["epoch"] = r.epoch


def cancelled():
    if mode == "in_epoch_3" and seen["epoch"] == 2:
        seen["polls"] += 1
        if seen["polls"] == 2:  # one batch of epoch 3 done
            wait_to_be_killed()
    return False


if mode == "in_checkpoint_write":  # killed halfway through writing epoch 2's .last.pt
    import io
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            wait_to_be_killed()
        return real_save(obj, f, *a, **k)

    torch.save = half_save

train(TrainParams(chips, model, epochs=EPOCHS, batch_size=4, device="cpu", seed=3, model_options=TINY),
      cancelled=cancelled, report=report)
""".replace("EPOCHS", str(EPOCHS)).replace("TINY", repr(TINY))


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    return make_chips(str(tmp_path_factory.mktemp("killchips")), 128, 96, bands=3)


def params(chips: str, folder, **kw) -> TrainParams:
    kw.setdefault("epochs", EPOCHS)
    return TrainParams(chips, str(folder / "model.pt"), batch_size=4, device="cpu", seed=3, model_options=TINY, **kw)


@pytest.fixture(scope="module")
def uninterrupted(chips, tmp_path_factory):
    return train(params(chips, tmp_path_factory.mktemp("full")))


def run_and_kill(chips: str, folder, mode: str) -> None:
    """Start training in a child process, wait until it reaches `mode`'s point, SIGKILL it."""
    folder.mkdir()
    script, marker = folder / "child.py", folder / "reached"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), chips, str(folder / "model.pt"), mode, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300  # a guard against a hung child, not a timing assertion
    try:
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before reaching its point:\n{child.stdout.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the child did not reach its point"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    script.unlink()
    marker.unlink()


def assert_same_run(a: list[dict], b: list[dict]) -> None:
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b] == list(range(1, EPOCHS + 1))
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_miou", "val_oa", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["epoch"], key)
        assert x["per_class_iou"] == pytest.approx(y["per_class_iou"], abs=1e-6)


def test_killed_in_epoch_3_resumes_as_if_never_killed(chips, uninterrupted, tmp_path):
    folder = tmp_path / "run"
    run_and_kill(chips, folder, "in_epoch_3")
    paths = output_paths(str(folder / "model.pt"))
    assert load_checkpoint(paths["last"])["epoch"] == 2 and not os.path.exists(paths["onnx"])
    resumed = train(params(chips, folder, resume=True))
    assert_same_run(uninterrupted.history, resumed.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    a = torch.load(uninterrupted.model_path, weights_only=True)["state_dict"]
    b = torch.load(resumed.model_path, weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)
    assert sorted(os.listdir(folder)) == ["model.last.pt", "model.metrics.csv", "model.onnx", "model.pt"]


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(chips, uninterrupted, tmp_path):
    folder = tmp_path / "run"
    run_and_kill(chips, folder, "in_checkpoint_write")
    paths = output_paths(str(folder / "model.pt"))
    partial = [n for n in os.listdir(folder) if n.startswith(".model.last.pt.partial-")]
    assert len(partial) == 1, "the half-written checkpoint is a temporary file beside it"
    with pytest.raises(GeoSegError):
        load_checkpoint(str(folder / partial[0]))  # truly half-written
    assert load_checkpoint(paths["last"])["epoch"] == 1, "the previous checkpoint is whole"
    resumed = train(params(chips, folder, resume=True))
    assert_same_run(uninterrupted.history, resumed.history)
    assert not any(n.startswith(".") for n in os.listdir(folder)), "resume removes the stale temporary file"


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", r"RESUME: .*model\.last\.pt is truncated or damaged \(its zip directory is missing\)"),
        ("flip", r"RESUME: .*model\.last\.pt is damaged \(checksum mismatch in archive/"),
        ("empty", r"RESUME: .*model\.last\.pt is not a readable PyTorch checkpoint"),
    ],
)
def test_resume_refuses_a_damaged_checkpoint(chips, tmp_path, damage, message):
    p = params(chips, tmp_path, epochs=1)
    train(p)
    last = output_paths(p.output_model)["last"]
    data = bytearray(open(last, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # 16 bytes in the middle of the largest tensor: torch.load alone would not notice
        with zipfile.ZipFile(last) as z:
            info = max(z.infolist(), key=lambda i: i.file_size)
        h = info.header_offset
        name_len, extra_len = struct.unpack("<HH", bytes(data[h + 26 : h + 30]))
        start = h + 30 + name_len + extra_len + info.file_size // 2
        data[start : start + 16] = bytes(255 - b for b in data[start : start + 16])
    else:
        data = bytearray()
    with open(last, "wb") as f:
        f.write(data)
    before = {n: sha(str(tmp_path / n)) for n in os.listdir(tmp_path)}
    with pytest.raises(GeoSegError, match=message):
        train(TrainParams(**{**p.__dict__, "epochs": 2, "resume": True}))
    assert {n: sha(str(tmp_path / n)) for n in os.listdir(tmp_path)} == before
