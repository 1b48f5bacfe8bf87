"""core.deps: which modules are missing, the pip command, the target folder, CUDA detection, QGIS's python."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from geoseg.core import deps


def fake_spec(present: set[str]):
    def find_spec(name: str):
        if name == "blocked":
            raise ImportError("blocked by an import hook")
        return object() if name in present else None

    return find_spec


def test_missing_for_steps():
    spec = fake_spec({"onnx", "onnxruntime"})
    assert deps.missing_for("train", spec) == ["torch", "onnxscript"]
    assert deps.missing_for("segment", spec) == []
    assert deps.missing_for("all", spec) == ["torch", "onnxscript"]
    assert deps.missing(["blocked", "onnx"], spec) == ["blocked"]  # a raising finder counts as missing
    with pytest.raises(ValueError, match="unknown step"):
        deps.missing_for("nope", spec)


def test_missing_sees_none_placeholder(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert deps.missing(["torch", "json"]) == ["torch"]
    assert "training" in deps.describe_missing(["torch"])


def test_target_dir_is_per_python_version(tmp_path):
    assert deps.target_dir(str(tmp_path), (3, 11)) == os.path.join(str(tmp_path), "python", "geoseg-deps", "py3.11")
    assert deps.target_dir("/p", (3, 12)).endswith(os.path.join("geoseg-deps", "py3.12"))


def test_activate_makes_later_installs_importable(tmp_path):
    folder = tmp_path / "deps"  # does not exist yet: activated at plugin load, filled later
    path = list(sys.path)
    saved = sys.path[:]
    try:
        assert deps.activate(str(folder))
        assert sys.path[0] == str(folder)
        assert not deps.activate(str(folder))  # once
        assert sys.path.count(str(folder)) == 1
        assert importlib.util.find_spec("geoseg_deps_probe") is None
        (folder / "geoseg_deps_probe").mkdir(parents=True)
        (folder / "geoseg_deps_probe" / "__init__.py").write_text("VALUE = 7\n")
        deps.activate(str(folder))  # invalidates the import caches
        import geoseg_deps_probe

        assert geoseg_deps_probe.VALUE == 7
    finally:
        sys.path[:] = saved
        sys.modules.pop("geoseg_deps_probe", None)
    assert path == sys.path
    explicit: list[str] = ["/a"]
    assert deps.activate("/b", explicit) and explicit == ["/b", "/a"]


def test_cuda_detection():
    none = lambda _: None  # noqa: E731
    smi = lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None  # noqa: E731
    assert deps.has_nvidia_driver("Linux", smi, lambda p: False)
    assert deps.has_nvidia_driver("Linux", none, lambda p: p == "/proc/driver/nvidia/version")
    assert not deps.has_nvidia_driver("Linux", none, lambda p: False)
    assert not deps.has_nvidia_driver("Darwin", smi, lambda p: True)
    assert deps.has_nvidia_driver("Windows", none, lambda p: p.lower().endswith("nvidia-smi.exe"))
    assert deps.gpu_names(none) == []


def test_packages_and_index_choice():
    assert deps.pip_packages(["torch", "onnxruntime"], cuda=False, numpy_version="1.24.2") == [
        "torch>=2.1",
        "onnxruntime>=1.17",
        "numpy==1.24.2",
    ]
    assert deps.pip_packages(["onnxruntime"], cuda=True) == ["onnxruntime-gpu>=1.17"]
    assert deps.pip_packages([], cuda=True, numpy_version="1.24.2") == []
    assert deps.index_args(cuda=False, system="Linux") == ["--extra-index-url", deps.CPU_INDEX]
    assert deps.index_args(cuda=True, system="Linux") == []  # PyPI's Linux torch is the CUDA build
    assert deps.index_args(cuda=True, system="Windows") == ["--extra-index-url", deps.WINDOWS_CUDA_INDEX]
    assert deps.index_args(cuda=False, system="Windows") == []
    assert deps.index_args(cuda=False, system="Darwin") == []


def test_pip_command():
    cmd = deps.pip_command("/usr/bin/python3.11", "/t", ["torch>=2.1"], ["--extra-index-url", "X"], ["--no-index"])
    assert cmd[:4] == ["/usr/bin/python3.11", "-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == "/t"
    assert cmd.index("--extra-index-url") < cmd.index("--no-index") < cmd.index("torch>=2.1") == len(cmd) - 1


def test_python_candidates_inside_qgis():
    """In QGIS sys.executable is the qgis binary: it is skipped, the prefix's python comes first."""
    which = lambda name: f"/usr/local/bin/{name}"  # noqa: E731
    linux = deps.python_candidates("/usr/bin/qgis", "/usr/bin/qgis", "/usr", "Linux", (3, 11), which)
    assert linux[0] == "/usr/bin/python3.11" and "/usr/bin/qgis" not in linux
    assert "/usr/local/bin/python3.11" in linux
    venv = deps.python_candidates("/v/bin/python", "/usr/bin/python3.11", "/v", "Linux", (3, 11), which)
    assert venv[:2] == ["/v/bin/python", "/v/bin/python3.11"]
    # embedded Python guesses sys.executable from the PATH: a python outside QGIS's prefix is not trusted first
    shim = deps.python_candidates("/home/u/.pyenv/shims/python3", None, "/usr", "Linux", (3, 11), which)
    assert shim[0] == "/usr/bin/python3.11" and "/home/u/.pyenv/shims/python3" not in shim
    win = deps.python_candidates(
        r"C:\OSGeo4W\bin\qgis-bin.exe", None, r"C:\OSGeo4W\apps\Python39", "Windows", (3, 9), lambda n: None
    )
    assert win[0] == os.path.join(r"C:\OSGeo4W\apps\Python39", "python.exe")
    assert not any(c.endswith("qgis-bin.exe") for c in win)


def test_find_python_checks_the_version():
    versions = {"/a": (3, 9), "/b": (3, 11), "/c": (3, 11)}
    assert deps.find_python((3, 11), versions.get, ["/a", "/b", "/c"]) == "/b"
    assert deps.find_python((3, 12), versions.get, ["/a", "/b"]) is None
    assert deps.python_version_of(sys.executable) == tuple(sys.version_info[:2])
    assert deps.python_version_of("/nonexistent/python") is None
    assert deps.find_python() is not None


def test_device_summary_here():
    info = deps.device_summary()
    assert info["torch"] and info["device"] in ("cpu", "cuda")
    assert "CPUExecutionProvider" in info["providers"]
    lines = deps.summary_lines(info)
    assert lines[0].startswith("device: ") and "onnxruntime" in lines[1] and "CPUExecutionProvider" in lines[1]
    empty = deps.summary_lines(
        {"torch": None, "cuda": False, "gpu": None, "onnxruntime": None, "providers": [], "errors": []}
    )
    assert "not installed" in empty[0] and "not installed" in empty[1]
