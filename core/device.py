"""The torch device a run uses: DEVICE ('auto', 'cpu', 'cuda') → 'cpu' or 'cuda'.

torch is imported only when `resolve_device` is called.
"""

from __future__ import annotations

from .errors import GeoSegError
from .options import DEVICES


def resolve_device(name: str) -> str:
    import torch

    if name not in DEVICES:
        raise GeoSegError(f"DEVICE must be one of {', '.join(DEVICES)} (got '{name}').")
    if name == "cuda" and not torch.cuda.is_available():
        raise GeoSegError(
            f"DEVICE: CUDA was requested, but this torch ({torch.__version__}) sees no CUDA "
            "device. Choose auto or cpu, or install a CUDA build of torch."
        )
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
