"""scripts/gpucheck.py (`make gpucheck`) on a machine without CUDA: one line, exit 0; and the parts of its
checks that need no GPU. The GPU checks themselves run only on a CUDA machine, never in `make test`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support.helpers import REPO

SCRIPT = os.path.join(REPO, "scripts", "gpucheck.py")
NO_CUDA = not torch.cuda.is_available()


def _load():
    spec = importlib.util.spec_from_file_location("gpucheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpucheck"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: the script would run its checks")
def test_without_cuda_one_line_and_exit_0():
    r = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpucheck: no CUDA device (torch ") and lines[0].endswith("nothing to check.")
    assert "CPUExecutionProvider" in lines[0]


def test_without_torch_or_onnxruntime_one_line_and_exit_0():
    """Neither package importable (a None entry in sys.modules blocks the import): still one line, no traceback."""
    code = (
        "import runpy, sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None; "
        f"sys.argv = [{SCRIPT!r}]; runpy.run_path({SCRIPT!r}, run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.splitlines() == [
        "gpucheck: no CUDA device (torch is not installed; onnxruntime is not installed); nothing to check."
    ]


def test_check_functions_are_importable():
    for name in (
        "check_onnx_inference",
        "check_torch_inference",
        "check_training",
        "check_oom",
        "check_auto_batch",
        "check_cuda_equals_cpu",
        "run_checks",
        "main",
    ):
        assert callable(getattr(gc, name))


def test_class_agreement_and_max_abs_diff():
    a = np.zeros((100, 100), np.uint8)
    b = a.copy()
    assert gc.class_agreement(a, b) == 1.0
    b[0, :10] = 1
    assert gc.class_agreement(a, b) == pytest.approx(0.999)
    assert gc.class_agreement(a, b) >= gc.TILE_TOLERANCE
    b[1, 0] = 1
    assert gc.class_agreement(a, b) < gc.TILE_TOLERANCE
    assert gc.class_agreement(np.zeros(0), np.zeros(0)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        gc.class_agreement(a, a[:5])
    p = np.full((3, 4, 4), 0.25, np.float32)
    q = p.copy()
    q[1, 2, 3] = 0.2
    assert gc.max_abs_diff(p, q) == pytest.approx(0.05)
    assert gc.max_abs_diff(p, p) == 0.0


def test_speed_ratio_and_oom_start_batch():
    assert gc.speed_ratio(2.0, 1.0) == 2.0
    assert gc.speed_ratio(1.0, 0.0) == float("inf")
    total, sample = 141e9, 4.0 * 4 * 4096 * 4096
    start = gc.oom_start_batch(total, sample)
    assert start & (start - 1) == 0 and start * sample >= 2 * total and start // 2 * sample < 2 * total


def test_report_lines_and_no_cuda_line():
    checks = [gc.Check("a", "1 tiles/s", True), gc.Check("b", "2 GiB", False)]
    assert checks[0].line().endswith("1 tiles/s  PASS") and checks[1].line().endswith("FAIL")
    text = gc.report(["device X"], checks, 12.3).splitlines()
    assert text[0] == "device X" and len(text) == 4 and text[-1] == "2 checks in 12 s, FAILED: b."
    assert gc.report([], checks[:1], 1).endswith("all passed.")
    info = {"torch": "2.0", "cuda": False, "onnxruntime": "1.2", "providers": ["CPUExecutionProvider"]}
    assert gc.no_cuda_line(info) == (
        "gpucheck: no CUDA device (torch 2.0 sees none; onnxruntime 1.2 providers: CPUExecutionProvider); "
        "nothing to check."
    )


def test_oom_check_halves_a_simulated_oom_on_cpu():
    """check_oom's CPU form (a memory budget) goes through core.memory.retry_halving_batch and recovers."""
    c = gc.check_oom(gc.CPU)
    assert c.ok and "halving" in c.figure, c.figure
