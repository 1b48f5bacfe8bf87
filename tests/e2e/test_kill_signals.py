"""Issue 13, family 5: SIGTERM (a desktop session ending, a job scheduler) sent to a GeoSeg run at a
known point cleans up like a cancel (core/signals.py is the one bridge): the run exits non-zero with
a message naming the signal, leaves nothing partial (hidden files included), and a re-run works.
Training killed while writing its checkpoint keeps a resumable state: RESUME continues it, and a
plain re-run says to use RESUME (no traceback).

Each child is a real program: `python -m geoseg.core` (through a small script that installs the
pause below, then calls the same `main`), and scripts/qgis_process (the same pause installed by a
`sitecustomize.py` on PYTHONPATH, which Python imports when the embedded interpreter starts). The
pause is a wrapper around one engine function: the child writes a marker file at the point and
waits there until its signal arrives, so the signal lands at a known moment without any timing in
the test. It then carries on, as the interrupted write would have, and the run notices its cancel
flag at the next check. No production code knows about the pause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.helpers import QGIS_PROCESS, REPO, make_raster, standard_labels

EPOCHS = 4
TINY = '{"base_width": 4, "depth": 2}'
PLUGINS = os.path.join(REPO, ".build", "plugins")  # where scripts/qgis_process links the checkout as `geoseg`

# The pause, installed in the child before the run starts. GEOSEG_KILL_POINT picks the point,
# GEOSEG_KILL_MARKER is the file written when the child is there.
HOOKS = textwrap.dedent(
    r"""
    import io, os, threading, time

    def _pause():
        from geoseg.core import signals
        with open(os.environ["GEOSEG_KILL_MARKER"], "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 120
        while signals.received() is None and time.monotonic() < deadline:
            time.sleep(0.02)

    def install(point):
        once = threading.Lock()
        if point == "segment":  # after the first strip of the class map is written
            from geoseg.core import stream
            real = stream.PyramidWriter.write
            def write(self, data):
                real(self, data)
                if once.acquire(blocking=False):
                    _pause()
            stream.PyramidWriter.write = write
        elif point == "exportchips":  # after two chips are written (a writer thread)
            from geoseg.core import chips
            real = chips._export_one
            done = []
            def export_one(*a, **k):
                result = real(*a, **k)
                done.append(1)
                if len(done) >= 2 and once.acquire(blocking=False):
                    _pause()
                return result
            chips._export_one = export_one
        elif point == "exportonnx":  # the ONNX file half-written
            from geoseg.models import export
            real = export.export_onnx
            def export_onnx(model, in_channels, path, *a, **k):
                real(model, in_channels, path, *a, **k)
                data = open(path, "rb").read()
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                _pause()
                with open(path, "wb") as f:
                    f.write(data)
            export.export_onnx = export_onnx
        elif point == "train":  # half of epoch 2's resumable state written
            import torch
            real = torch.save
            def save(obj, f, *a, **k):
                if isinstance(obj, dict) and obj.get("epoch") == 2 and hasattr(f, "write"):
                    buf = io.BytesIO()
                    real(obj, buf, *a, **k)
                    data = buf.getvalue()
                    f.write(data[: len(data) // 2])
                    f.flush()
                    _pause()
                    f.write(data[len(data) // 2 :])
                    return None
                return real(obj, f, *a, **k)
            torch.save = save
    """
)

CLI_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import geoseg_kill_hooks
    geoseg_kill_hooks.install(os.environ["GEOSEG_KILL_POINT"])
    from geoseg.core.__main__ import main
    sys.exit(main(sys.argv[1:]))
    """
)

SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os, sys
    # only the interpreter embedded in qgis_process (not the venv's python that scripts/qgis_process runs first)
    if os.environ.get("GEOSEG_KILL_POINT") and not getattr(sys, "orig_argv", None):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        sys.path.insert(0, {PLUGINS!r})
        import geoseg_kill_hooks
        geoseg_kill_hooks.install(os.environ["GEOSEG_KILL_POINT"])
    """
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A 3-band raster, its labels, a chips folder, a tiny `.pt` and its `.onnx`; the child scripts."""
    from geoseg.core.chips import ExportParams, export_chips
    from geoseg.core.train import TrainParams, export_model_onnx, train

    d = tmp_path_factory.mktemp("kill_inputs")
    make_raster(str(d / "rgb.tif"), 128, 96, bands=3)
    standard_labels(str(d / "labels.gpkg"))
    export_chips(
        ExportParams(
            str(d / "rgb.tif"),
            str(d / "labels.gpkg"),
            str(d / "chips"),
            class_field="cls",
            chip_size=32,
            validation_fraction=0.25,
        )
    )
    train(
        TrainParams(
            str(d / "chips"),
            str(d / "model.pt"),
            epochs=1,
            batch_size=4,
            device="cpu",
            model_options={"base_width": 4, "depth": 2},
        )
    )
    assert os.path.isfile(d / "model.onnx")
    os.remove(d / "model.last.pt")
    os.remove(d / "model.metrics.csv")
    (d / "geoseg_kill_hooks.py").write_text(HOOKS)
    (d / "cli_child.py").write_text(CLI_CHILD)
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    assert export_model_onnx  # the exportonnx runs below use the same function through both front-ends
    return d


def args_for(way: str, alg: str, d: Path, out: Path, *, resume: bool = False) -> list[str]:
    """The command line of `alg` with the fixture's inputs, writing into `out`."""
    params = {
        "segment": {"INPUT": d / "rgb.tif", "MODEL": d / "model.onnx", "OUTPUT": out / "classes.tif", "DEVICE": 1},
        "exportchips": {
            "INPUT": d / "rgb.tif",
            "LABELS": d / "labels.gpkg",
            "CLASS_FIELD": "cls",
            "CHIP_SIZE": 16,
            "OUTPUT_DIR": out / "chips",
        },
        "exportonnx": {"MODEL": d / "model.pt", "OUTPUT": out / "m.onnx"},
        "train": {
            "CHIPS": d / "chips",
            "OUTPUT_MODEL": out / "m.pt",
            "EPOCHS": EPOCHS,
            "BATCH_SIZE": 4,
            "DEVICE": 1,
            "SEED": 3,
            "MODEL_OPTIONS": TINY,
            **({"RESUME": "true"} if resume else {}),
        },
    }[alg]
    if way == "qgis_process":
        return [QGIS_PROCESS, "run", f"geoseg:{alg}", "--", *[f"{k}={v}" for k, v in params.items()]]
    flags = {
        "INPUT": "--input", "MODEL": "--model", "OUTPUT": "--output", "LABELS": "--labels", "CLASS_FIELD":
        "--class-field", "CHIP_SIZE": "--chip-size", "OUTPUT_DIR": "--output-dir", "CHIPS": "--chips",
        "OUTPUT_MODEL": "--output-model", "EPOCHS": "--epochs", "BATCH_SIZE": "--batch-size", "SEED": "--seed",
        "MODEL_OPTIONS": "--model-options",
    }  # fmt: skip
    cli = [alg, "--device", "cpu"] if alg in ("segment", "train") else [alg]
    for k, v in params.items():
        if k == "RESUME":
            cli.append("--resume")
        elif k != "DEVICE":
            cli += [flags[k], str(v)]
    return cli


def env_for(d: Path, point: str | None, marker: Path | None) -> dict[str, str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", GDAL_PAM_ENABLED="NO")
    env.pop("GEOSEG_KILL_POINT", None)
    if point:
        env.update(GEOSEG_KILL_POINT=point, GEOSEG_KILL_MARKER=str(marker))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(d), env.get("PYTHONPATH", "")) if p)
    return env


def command(way: str, alg: str, d: Path, out: Path, *, hooked: bool, resume: bool = False) -> list[str]:
    a = args_for(way, alg, d, out, resume=resume)
    if way == "qgis_process":
        return a
    return [sys.executable, str(d / "cli_child.py"), *a] if hooked else [sys.executable, "-m", "geoseg.core", *a]


def run(way: str, alg: str, d: Path, out: Path, resume: bool = False) -> subprocess.CompletedProcess:
    """A plain (unhooked) run."""
    return subprocess.run(
        command(way, alg, d, out, hooked=False, resume=resume),
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env_for(d, None, None),
    )


def run_and_terminate(way: str, alg: str, d: Path, out: Path) -> tuple[int, str]:
    """Start `alg` with the pause at its point, wait until the child is there, send SIGTERM; return
    (exit status, output)."""
    marker = out.parent / f"{out.name}.reached"
    child = subprocess.Popen(
        command(way, alg, d, out, hooked=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env_for(d, alg, marker),
    )
    deadline = time.monotonic() + 300  # a guard against a hung child, not a timing assertion
    try:
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before reaching its point:\n{child.stdout.read()[-3000:]}")
            assert time.monotonic() < deadline, "the child did not reach its point"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        text, _ = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    marker.unlink()
    return child.returncode, text


def every_file(folder: Path) -> list[str]:
    """Every file and folder below `folder`, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


WAYS = ["cli", "qgis_process"]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("alg", ["segment", "exportchips", "exportonnx"])
def test_sigterm_mid_write_leaves_nothing_and_a_rerun_works(inputs, tmp_path, way, alg):
    out = tmp_path / "out"
    out.mkdir()
    status, text = run_and_terminate(way, alg, inputs, out)
    assert status != 0, text[-3000:]
    if way == "cli":
        assert status == 128 + signal.SIGTERM, text[-3000:]
    assert "Stopped by SIGTERM" in text and "Traceback" not in text, text[-3000:]
    assert every_file(out) == [], "a partial (or complete) output was left behind"
    again = run(way, alg, inputs, out)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert not [f for f in every_file(out) if ".partial-" in f]
    assert every_file(out)


@pytest.mark.parametrize("way", WAYS)
def test_sigterm_mid_checkpoint_keeps_a_resumable_run(inputs, tmp_path, way):
    from geoseg.core.checkpoint import load_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    status, text = run_and_terminate(way, "train", inputs, out)
    assert status != 0, text[-3000:]
    if way == "cli":
        assert status == 128 + signal.SIGTERM, text[-3000:]
    assert "Stopped by SIGTERM" in text and "RESUME" in text and "Traceback" not in text, text[-3000:]
    assert every_file(out) == ["m.last.pt", "m.metrics.csv", "m.pt"], "nothing partial, no ONNX yet"
    assert load_checkpoint(str(out / "m.last.pt"), "RESUME")["epoch"] == 2  # the interrupted write completed

    plain = run(way, "train", inputs, out)
    assert plain.returncode != 0
    said = plain.stdout + plain.stderr
    assert "Set RESUME to continue" in said and "Traceback" not in said, said[-3000:]

    resumed = run(way, "train", inputs, out, resume=True)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert every_file(out) == ["m.last.pt", "m.metrics.csv", "m.onnx", "m.pt"]
    state = load_checkpoint(str(out / "m.last.pt"), "RESUME")
    assert state["epoch"] == EPOCHS and [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1))


def test_stale_partials_of_a_sigkilled_run_are_removed_by_the_next_run(inputs, tmp_path):
    """SIGKILL cannot be caught: the next run of the same outputs removes what the killed one left."""
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "out.reached"
    child = subprocess.Popen(
        command("cli", "exportchips", inputs, out, hooked=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env_for(inputs, "exportchips", marker),
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child did not reach its point"
            time.sleep(0.05)
        child.kill()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    left = every_file(out)
    assert left and all(f.startswith(".chips.partial-") for f in left), left
    again = run("cli", "exportchips", inputs, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [f for f in every_file(out) if ".partial-" in f]
    assert "left behind by an interrupted run" in again.stderr
