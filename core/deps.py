"""GeoSeg's optional deep-learning stack: what is missing, where it goes and the pip command that installs it.

QGIS ships neither torch nor onnxruntime. The plugin installs them with pip into a folder of its own
in the QGIS profile (`<profile>/python/geoseg-deps/py3.11`), which plugin load puts first on
`sys.path`. Everything here is plain Python (no qgis, no Qt) so the rules are unit-tested; the dialog
(ui/deps_dialog.py) only runs the command and streams its output.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WINDOWS_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"  # PyPI's Windows torch is CPU-only
DEPS_FOLDER = "geoseg-deps"


@dataclass(frozen=True)
class Requirement:
    """One importable module and the pip distribution that provides it."""

    module: str
    package: str
    spec: str
    purpose: str
    gpu_package: str | None = None  # distribution to install instead when an NVIDIA GPU is there


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch", ">=2.1", "training, .pt models"),
    Requirement("onnx", "onnx", ">=1.15", "ONNX export and model checks"),
    Requirement("onnxscript", "onnxscript", "", "ONNX export by torch"),
    Requirement(
        "onnxruntime", "onnxruntime", ">=1.17", "segmentation with .onnx models", gpu_package="onnxruntime-gpu"
    ),
)
# Optional: only for SCHEDULER (segmenting on a Dask cluster, core.distributed); never installed with "all".
# Client, scheduler and workers must run the same version, so none is pinned here.
OPTIONAL: tuple[Requirement, ...] = (
    Requirement("dask", "dask", "", "segmenting on a Dask cluster (SCHEDULER)"),
    Requirement("distributed", "distributed", "", "segmenting on a Dask cluster (SCHEDULER)"),
)
BY_MODULE = {r.module: r for r in REQUIREMENTS + OPTIONAL}

# modules each step imports when its work starts
STEPS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "onnx", "onnxscript"),
    "segment": ("onnx", "onnxruntime"),
    "exportonnx": ("torch", "onnx", "onnxscript"),
    "all": tuple(r.module for r in REQUIREMENTS),
    "cluster": tuple(r.module for r in OPTIONAL),
}


def is_importable(module: str, find_spec: Callable[[str], object] = importlib.util.find_spec) -> bool:
    """Whether `import module` would find it, without importing it (plugin load must stay light).

    A finder that raises (an import hook blocking the module) or a None placeholder in sys.modules
    counts as missing."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: Sequence[str], find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """The modules in `modules` that cannot be imported, in order."""
    return [m for m in modules if not is_importable(m, find_spec)]


def missing_for(step: str, find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """What `step` (train, segment, exportonnx, all) needs and this Python lacks."""
    if step not in STEPS:
        raise ValueError(f"unknown step '{step}' (one of {', '.join(STEPS)})")
    return missing(STEPS[step], find_spec)


def describe_missing(modules: Sequence[str]) -> str:
    """'torch (training, .pt models), onnx (…)' for messages."""
    return ", ".join(f"{m} ({BY_MODULE[m].purpose})" if m in BY_MODULE else m for m in modules)


def target_dir(settings_dir: str, version: tuple[int, int] = sys.version_info[:2]) -> str:
    """The per-profile folder pip installs into: one per Python minor version (wheels are ABI-specific)."""
    return os.path.join(settings_dir, "python", DEPS_FOLDER, f"py{version[0]}.{version[1]}")


def activate(folder: str, path: list[str] | None = None) -> bool:
    """Put `folder` first on the import path (once) and let the import system see new packages there.

    Works before the folder exists: invalidate_caches() drops the 'no such folder' cache entry, so a
    package installed later in the session imports without restarting QGIS."""
    path = sys.path if path is None else path
    folder = os.path.abspath(folder)
    added = folder not in path
    if added:
        path.insert(0, folder)
    importlib.invalidate_caches()
    return added


# ---------------------------------------------------------------- GPU detection
def has_nvidia_driver(
    system: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
) -> bool:
    """An NVIDIA driver is installed (nvidia-smi on the PATH, or /proc/driver/nvidia on Linux).

    No CUDA on macOS; the driver, not a CUDA toolkit, is what the pip wheels need."""
    system = system or platform.system()
    if system == "Darwin":
        return False
    if which("nvidia-smi"):
        return True
    if system == "Windows":
        root = os.environ.get("SystemRoot", r"C:\Windows")
        return exists(os.path.join(root, "System32", "nvidia-smi.exe"))
    return exists("/proc/driver/nvidia/version")


def _output_of(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`cmd` run to the end (or `timeout`), its output captured as text; a non-zero exit is not raised."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def gpu_names(which: Callable[[str], str | None] = shutil.which, timeout: float = 5.0) -> list[str]:
    """Names of the NVIDIA GPUs as nvidia-smi reports them; [] when it is absent or fails."""
    exe = which("nvidia-smi")
    if not exe:
        return []
    try:
        out = _output_of([exe, "--query-gpu=name", "--format=csv,noheader"], timeout)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


# ---------------------------------------------------------------- pip command
def pip_packages(modules: Sequence[str], cuda: bool, numpy_version: str | None = None) -> list[str]:
    """pip requirement strings for `modules`: onnxruntime-gpu with CUDA, and numpy pinned to the
    version QGIS already uses (GDAL's bindings are built against it; numpy 2 would break them).

    pip --target ignores what is installed elsewhere, so without the pin it would fetch the newest
    numpy into the folder that is first on sys.path."""
    out = []
    for m in modules:
        r = BY_MODULE[m]
        out.append((r.gpu_package if cuda and r.gpu_package else r.package) + r.spec)
    if numpy_version and out:
        out.append(f"numpy=={numpy_version}")
    return out


def index_args(cuda: bool, system: str | None = None) -> list[str]:
    """Where torch's wheels come from. Linux PyPI torch is the CUDA build (GBs), so without a GPU
    the CPU index is added (its '+cpu' versions win); on Windows PyPI torch is CPU-only, so a GPU
    adds the CUDA index. macOS: PyPI only."""
    system = system or platform.system()
    if system == "Linux" and not cuda:
        return ["--extra-index-url", CPU_INDEX]
    if system == "Windows" and cuda:
        return ["--extra-index-url", WINDOWS_CUDA_INDEX]
    return []


def pip_command(
    python: str, target: str, packages: Sequence[str], index: Sequence[str] = (), extra_args: Sequence[str] = ()
) -> list[str]:
    """The exact command the installer runs (and shows): pip into the plugin's own folder.

    --target keeps QGIS's own Python untouched (and works where the system Python is
    'externally managed'); --upgrade replaces an earlier, partial install in that folder."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--upgrade",
        "--target",
        target,
        *index,
        *extra_args,
        *packages,
    ]


def current_numpy_version(find_spec: Callable[[str], object] = importlib.util.find_spec) -> str | None:
    """numpy's version in this Python, read without importing it when possible."""
    if not is_importable("numpy", find_spec):
        return None
    try:
        from importlib.metadata import version

        return version("numpy")
    except Exception:  # noqa: BLE001  (no metadata: Debian's numpy has it, but be safe)
        return importlib.import_module("numpy").__version__


# ---------------------------------------------------------------- QGIS's python executable
def python_candidates(
    executable: str,
    base_executable: str | None,
    exec_prefix: str,
    system: str,
    version: tuple[int, int],
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """Where QGIS's Python interpreter may be, best first.

    Inside QGIS `sys.executable` is the qgis binary, or whatever `python3` comes first on the PATH
    (e.g. a pyenv shim), so it is used only when it is a python inside the running prefix (a venv's own
    python is); then the prefix's interpreter (OSGeo4W: apps/Python3x/python.exe, Debian:
    /usr/bin/python3.11), then the PATH."""
    major, minor = version
    out: list[str] = []

    def add(p: str | None) -> None:
        if p and p not in out:
            out.append(p)

    def inside_prefix(p: str) -> bool:
        try:
            return os.path.commonpath([os.path.abspath(p), os.path.abspath(exec_prefix)]) == os.path.abspath(
                exec_prefix
            )
        except ValueError:  # different drives on Windows
            return False

    for exe in (executable, base_executable):
        if exe and os.path.basename(exe).lower().startswith("python") and inside_prefix(exe):
            add(exe)
    if system == "Windows":
        for name in ("python.exe", "python3.exe"):
            add(os.path.join(exec_prefix, name))
        add(os.path.join(os.path.dirname(executable or ""), "python3.exe"))
        add(os.path.join(os.path.dirname(executable or ""), "python.exe"))
    else:
        for name in (f"python{major}.{minor}", f"python{major}", "python"):
            add(os.path.join(exec_prefix, "bin", name))
    for name in (f"python{major}.{minor}", f"python{major}"):
        add(which(name))
    return out


def python_version_of(path: str, timeout: float = 10.0) -> tuple[int, int] | None:
    """(major, minor) of the interpreter at `path`, None when it is not one that runs."""
    if not os.path.isfile(path):
        return None
    try:
        out = _output_of([path, "-c", "import sys; print(*sys.version_info[:2])"], timeout)
        major, minor = (int(v) for v in out.stdout.split())
        return major, minor
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def find_python(
    version: tuple[int, int] = sys.version_info[:2],
    version_of: Callable[[str], tuple[int, int] | None] = python_version_of,
    candidates: Sequence[str] | None = None,
) -> str | None:
    """The first candidate interpreter with QGIS's Python version (wheels must match its ABI)."""
    if candidates is None:
        candidates = python_candidates(
            sys.executable, getattr(sys, "_base_executable", None), sys.exec_prefix, platform.system(), version
        )
    return next((c for c in candidates if version_of(c) == tuple(version)), None)


# ---------------------------------------------------------------- what the user runs on
def device_summary() -> dict:
    """The device torch would train on and the onnxruntime execution providers, for the dialogs.

    Imports torch and onnxruntime (only when asked: never at plugin load); a missing or broken
    package is reported, not raised."""
    info: dict = {
        "torch": None,
        "cuda": False,
        "gpu": None,
        "device": "cpu",
        "onnxruntime": None,
        "providers": [],
        "errors": [],
    }
    if is_importable("torch"):
        try:
            import torch

            info["torch"] = torch.__version__
            if torch.cuda.is_available():
                info.update(cuda=True, device="cuda", gpu=torch.cuda.get_device_name(0))
        except Exception as e:  # noqa: BLE001  (a broken install must not break the dialog)
            info["errors"].append(f"torch: {e}")
    if is_importable("onnxruntime"):
        try:
            import onnxruntime

            info["onnxruntime"] = onnxruntime.__version__
            info["providers"] = list(onnxruntime.get_available_providers())
        except Exception as e:  # noqa: BLE001
            info["errors"].append(f"onnxruntime: {e}")
    return info


def summary_lines(info: dict) -> list[str]:
    """device_summary() as the two lines the dialogs show."""
    if info["torch"] is None:
        device = "device: unknown (torch is not installed)"
    elif info["cuda"]:
        device = f"device: cuda ({info['gpu']}), torch {info['torch']}"
    else:
        device = f"device: cpu (torch {info['torch']} sees no CUDA GPU)"
    if info["onnxruntime"] is None:
        providers = "onnxruntime: not installed"
    else:
        providers = (
            f"onnxruntime {info['onnxruntime']} providers available: " f"{', '.join(info['providers']) or 'none'}"
        )
    return [device, providers, *info["errors"]]
