"""`.pt` files: weights and the card only, loaded with `weights_only=True` so a model file
cannot run code. Written to a temporary name and renamed, so a file is complete or absent."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from typing import Any

from .card import validate_card
from .errors import GeoSegError

FORMAT = "geoseg-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str) -> None:
    import torch

    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model(path: str, state_dict: dict, card: dict, extra: dict | None = None) -> None:
    """A model checkpoint (+ optional training state for resume); only tensors and plain data."""
    obj = {"format": FORMAT, "version": VERSION, "card": json.dumps(card), "state_dict": state_dict}
    if extra:
        obj.update(extra)
    atomic_save(obj, path)


def load_checkpoint(path: str, what: str = "MODEL") -> dict:
    """Load a `.pt` safely; refuse anything that is not plain weights and a valid card."""
    import torch

    if not os.path.isfile(path):
        raise GeoSegError(f"{what}: file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip format nor a raw pickle
        raise GeoSegError(f"{what}: {path} is not a readable PyTorch checkpoint (not a torch.save file).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else "")
        raise GeoSegError(
            f"{what}: {path} holds Python objects other than plain weights, which could run code when "
            f"loaded; GeoSeg refuses to load it ({reason[:160]}).") from None
    except Exception as e:  # noqa: BLE001  (zip/format errors of every kind)
        raise GeoSegError(f"{what}: {path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}).") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise GeoSegError(f"{what}: {path} is not a GeoSeg checkpoint (no '{FORMAT}' marker); use a .pt "
                          "written by GeoSeg's training, or an ONNX model with a GeoSeg card.")
    try:
        card = json.loads(obj["card"])
    except (KeyError, TypeError, ValueError):
        raise GeoSegError(f"{what}: {path} has no readable model card.") from None
    obj["card"] = validate_card(card)
    return obj


def model_from_checkpoint(state: dict, what: str = "MODEL"):
    """Rebuild the card's architecture and load the weights (never the original encoder file)."""
    from ..models.registry import build_model
    from .options import ARCHITECTURES

    card = state["card"]
    arch = card.get("architecture")
    if arch not in ARCHITECTURES:
        raise GeoSegError(f"{what}: the card names no known architecture ({arch!r}).")
    options = dict(card.get("architecture_options") or {})
    if "encoder_weights" in options:
        options["encoder_weights"] = None  # the trained weights below replace them
    try:
        model = build_model(arch, card["in_channels"], len(card["classes"]), **options)
        model.load_state_dict(state["state_dict"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise GeoSegError(f"{what}: the weights do not fit the card's architecture ({str(e)[:200]}).") from None
    return model
