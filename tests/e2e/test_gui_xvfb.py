"""scripts/screenshots.py in a real X server (Xvfb, xcb platform): it drives every GeoSeg dialog on a
small sample scene and grabs each window from the screen. The pictures must exist, have the window's
size and show something (not a blank grab); the state file proves the driving worked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from qgis.PyQt.QtGui import QImage

from tests.support.helpers import REPO
from tests.support.profile_helpers import XVFB, need_xvfb

NAMES = (
    "export_dialog.png",
    "chip_index.png",
    "train_dialog.png",
    "segment_dialog.png",
    "segment_result.png",
    "assess_dialog.png",
    "deps_dialog.png",
    "settings_dialog.png",
)
WINDOWS = (
    "export_dialog.png",
    "train_dialog.png",
    "segment_dialog.png",
    "assess_dialog.png",
    "deps_dialog.png",
    "settings_dialog.png",
)


def pixels(path: str) -> np.ndarray:
    img = QImage(path).convertToFormat(QImage.Format_RGB32)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    rows = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())
    return rows[:, : img.width() * 4].reshape(img.height(), img.width(), 4)[..., :3].copy()  # img owns the bytes


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    need_xvfb()
    out = tmp_path_factory.mktemp("shots")
    state = out / "state.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}  # the Makefile exports offscreen for everything else
    proc = subprocess.run(
        [
            *XVFB,
            sys.executable,
            os.path.join(REPO, "scripts", "screenshots.py"),
            str(out),
            "--state",
            str(state),
            "--epochs",
            "2",
            "--size",
            "192x160",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads(state.read_text(encoding="utf-8")), proc.stdout


def test_pictures_are_real_window_grabs(shots):
    out, state, stdout = shots
    assert state["platform"] == "xcb"
    assert [os.path.basename(line) for line in stdout.split()] == list(NAMES)
    for name in NAMES:
        path = out / name
        assert path.exists(), name
        img = QImage(str(path))
        recorded = state["shots"][name]
        assert [img.width(), img.height()] == recorded["image"], name
        if name in WINDOWS:
            assert recorded["window"] == recorded["image"], f"{name}: the grab is not the window's size"
            assert img.width() >= 500 and img.height() >= 400, name
        px = pixels(str(path)).astype(np.float32)
        assert px.std() > 10, f"{name} is blank"
        assert len(np.unique(px[::3, ::3].reshape(-1, 3), axis=0)) > 20, f"{name} has almost no content"


def test_dialogs_were_driven(shots):
    _, state, _ = shots
    export = state["export"]
    assert export["chips"] > 0 and export["chips"] == export["train"] + export["validation"]
    assert export["message"].startswith(f"Exported {export['chips']} chips") and export["class_field"] == "class"
    train = state["train"]
    assert train["epochs"] == 2 and 0 <= train["val_miou"] <= 1 and train["table_rows"] == 6
    assert "torch" in train["device_label"]
    segment = state["segment"]
    assert segment["output"] and segment["card_classes"] == 6 and segment["tiles"] > 0
    assert segment["provider"] and "providers available" in segment["device_info"]
    assess = state["assess"]
    assert 0 < assess["overall_accuracy"] <= 1 and 0 <= assess["mean_iou"] <= 1 and assess["table_rows"] > 1
    assert assess["summary"].startswith("<b>Overall accuracy ") and assess["class_field_visible"]
    assert not any(name.startswith("class ") for name in assess["class_names"])  # Segment's names are shown
    deps = state["deps"]
    assert [m.split(" ")[0] for m in deps["missing"]] == ["torch", "onnx", "onnxscript", "onnxruntime"]
    assert "--target" in deps["command"] and deps["install_enabled"]
    settings = state["settings"]
    assert settings["device_info"].startswith("device: ") and settings["batch_size"] == 8
    # the script ran on a throw-away profile, not the user's
    assert "geoseg-shots-profile-" in state["settings_dir"]


def test_readme_shows_the_committed_pictures():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for name in NAMES:
        assert os.path.exists(os.path.join(REPO, "docs", "images", name)), name
        assert f"docs/images/{name}" in readme, f"README does not show {name}"
