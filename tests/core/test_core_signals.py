"""Issue 13, families 4 and 5 in the engine: the signal-to-cancel bridge (core/signals.py), stale
partials of killed runs (core/staging.py), the model card validated before the first epoch, and a
training state that stays resumable whatever moment a kill lands on (core/train.py, core/trainer.py).
The whole programs under SIGTERM: tests/e2e/test_kill_signals.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time

import pytest

from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.signals import cancel_on_signals, received
from geoseg.core.staging import remove_stale_outputs, remove_stale_partials
from tests.support.helpers import make_raster, standard_labels

TINY = {"base_width": 4, "depth": 2}


# ------------------------------------------------------------------ the bridge
def test_sigterm_sets_the_flag_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with cancel_on_signals((signal.SIGTERM,)) as cancelled:
        assert signal.getsignal(signal.SIGTERM) is not before
        assert not cancelled()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs at the next bytecode of the main thread
            if cancelled():
                break
            time.sleep(0.01)
        assert cancelled() and cancelled.name == "SIGTERM" and received() == signal.SIGTERM
        assert cancelled.exit_status() == 128 + signal.SIGTERM
        assert cancelled.explain(str(Cancelled())) == "Stopped by SIGTERM: Cancelled; nothing was written."
    assert signal.getsignal(signal.SIGTERM) is before
    assert received() is None


def test_a_second_signal_stops_at_once():
    with pytest.raises(Cancelled, match="Stopped by SIGINT"), cancel_on_signals((signal.SIGINT,)) as cancelled:
        os.kill(os.getpid(), signal.SIGINT)
        while not cancelled():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(500):
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_other_cancel_still_counts_and_nothing_is_installed_off_the_main_thread():
    seen = {}

    def worker():
        with cancel_on_signals((signal.SIGTERM,), also=lambda: True) as cancelled:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["cancelled"] = cancelled()

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"handler": before, "cancelled": True}


def test_no_signals_installs_nothing():
    before = signal.getsignal(signal.SIGTERM)
    with cancel_on_signals(()) as cancelled:
        assert signal.getsignal(signal.SIGTERM) is before and not cancelled()


# ------------------------------------------------------------------ stale partials (SIGKILL)
def test_stale_partials_older_than_the_run_are_removed(tmp_path):
    target = tmp_path / "classes.tif"
    old_file = tmp_path / ".classes.tif.partial-abc123.tif"
    old_file.write_text("half")
    old_dir = tmp_path / ".classes.tif.partial-def456"
    (old_dir / "images").mkdir(parents=True)
    (old_dir / "images" / "x.tif").write_text("half")
    past = time.time() - 60
    os.utime(old_file, (past, past))
    os.utime(old_dir, (past, past))
    started = time.time()
    newer = tmp_path / ".classes.tif.partial-new999.tif"  # a run writing the same name right now
    newer.write_text("being written")
    os.utime(newer, (started + 1, started + 1))
    other = tmp_path / ".other.tif.partial-abc123.tif"
    other.write_text("someone else's")
    (tmp_path / "classes.tif.keep").write_text("mine")
    removed = remove_stale_partials(str(target), before=started)
    assert sorted(removed) == [old_file.name, old_dir.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([newer.name, other.name, "classes.tif.keep"])
    assert remove_stale_outputs([None, str(tmp_path / "missing" / "x.tif")], started) == []


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    from geoseg.core.chips import ExportParams, export_chips

    root = tmp_path_factory.mktemp("signal_chips")
    make_raster(str(root / "r.tif"), 64, 64, bands=3)
    out = str(root / "chips")
    export_chips(
        ExportParams(
            str(root / "r.tif"),
            standard_labels(str(root / "l.gpkg")),
            out,
            class_field="cls",
            chip_size=32,
            validation_fraction=0.25,
        )
    )
    return out


def _variant(chips: str, folder, **changes) -> str:
    out = str(folder / "chips")
    shutil.copytree(chips, out)
    with open(os.path.join(out, "dataset.json"), encoding="utf-8") as f:
        data = json.load(f)
    data.update(changes)
    with open(os.path.join(out, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    return out


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"background": 300}, r"CHIPS: dataset\.json .*card field background must be an integer 0–254"),
        ({"pixel_size": [0, 2]}, r"CHIPS: .*card field pixel_size\[0\] must be a finite number > 0"),
        ({"data_type": 5}, r"CHIPS: .*card field data_type must be a string or null"),
        ({"split": [1, 2]}, r"CHIPS: .*card field split must be an object or null"),
        ({"nodata": "none"}, r"CHIPS: .*card field nodata must be a list"),
    ],
)
def test_a_card_geoseg_would_refuse_fails_before_anything_is_written(chips, tmp_path, changes, message):
    from geoseg.core.train import TrainParams, train

    folder = _variant(chips, tmp_path, **changes)
    out = tmp_path / "new" / "m.pt"
    with pytest.raises(GeoSegError, match=message) as e:
        train(TrainParams(folder, str(out), epochs=1, batch_size=4, device="cpu", model_options=TINY))
    assert e.value.param == "CHIPS"
    assert not (tmp_path / "new").exists(), "no output folder, no .pt, .last.pt or .metrics.csv"


def test_plain_rerun_over_a_saved_state_says_resume(chips, tmp_path):
    from geoseg.core.train import TrainParams, train

    (tmp_path / "m.last.pt").write_bytes(b"state")
    with pytest.raises(GeoSegError, match="Set RESUME to continue that run") as e:
        train(TrainParams(chips, str(tmp_path / "m.pt"), epochs=1, batch_size=4, device="cpu", model_options=TINY))
    assert e.value.param == "OUTPUT_MODEL"


def test_resume_writes_again_what_a_kill_after_the_state_left_unwritten(chips, tmp_path, caplog):
    """The state is saved first in every epoch: a kill right after it (before the best model and the
    metrics) leaves everything RESUME needs to write them again."""
    from geoseg.core.checkpoint import load_checkpoint
    from geoseg.core.train import TrainParams, train

    p = TrainParams(chips, str(tmp_path / "m.pt"), epochs=1, batch_size=4, device="cpu", model_options=TINY)
    train(p)
    for name in ("m.pt", "m.metrics.csv", "m.onnx"):
        os.remove(tmp_path / name)
    stale = tmp_path / ".m.pt.partial-k1ll3d.pt"
    stale.write_bytes(b"half")
    past = time.time() - 60
    os.utime(stale, (past, past))
    with caplog.at_level(logging.INFO, logger="geoseg"):
        r = train(TrainParams(**{**p.__dict__, "epochs": 2, "resume": True}))
    assert "again from the saved state of epoch 1" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["m.last.pt", "m.metrics.csv", "m.onnx", "m.pt"]
    assert load_checkpoint(r.model_path)["card"].metrics.epoch == r.best_epoch
    with open(r.metrics_path, encoding="utf-8") as f:
        assert len(f.read().strip().splitlines()) == 3  # header + 2 epochs
