"""`.pt` files: weights and the card only, loaded with `weights_only=True` so a model file
cannot run code; and the `.onnx` beside them. Written to a partial name and renamed
(core.staging), so a file is complete or absent."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from typing import Any

from .card import CARD_KEY, ModelCard
from .errors import Cancelled, GeoSegError, IsCancelled
from .staging import atomic_write, staged_path

FORMAT = "geoseg-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `atomic_write`."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def save_model(path: str, state_dict: dict, card: ModelCard, extra: dict | None = None) -> None:
    """A model checkpoint (+ optional training state for resume); only tensors and plain data (the
    card as its JSON text, so `weights_only` loading never meets a Python object)."""
    obj = {"format": FORMAT, "version": VERSION, "card": card.to_json(), "state_dict": state_dict}
    if extra:
        obj.update(extra)
    atomic_save(obj, path)


def load_checkpoint(path: str, what: str = "MODEL") -> dict:
    """Load a `.pt` safely; refuse anything that is not plain weights and a valid card.
    `["card"]` of the result is the ModelCard."""
    import torch

    if os.path.isdir(path):
        raise GeoSegError(f"{what}: {path} is a folder; give a .pt file.", param=what)
    if not os.path.isfile(path):
        raise GeoSegError(f"{what}: file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # CRC of every member: torch itself does not notice flipped bytes
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            bad = f"({e})"
        if bad is not None:
            raise GeoSegError(
                f"{what}: {path} is damaged (checksum mismatch in {bad}); it cannot be used. "
                "Restore it from a backup, or start a new run."
            )
    elif head[:1] != b"\x80":  # neither torch's zip format nor a raw pickle
        if head[:2] == b"PK":
            raise GeoSegError(
                f"{what}: {path} is truncated or damaged (its zip directory is missing); it "
                "cannot be used. Restore it from a backup, or start a new run."
            )
        raise GeoSegError(f"{what}: {path} is not a readable PyTorch checkpoint (not a torch.save file).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        from ..models.resnet import refusal_reason

        reason = refusal_reason(e)
        raise GeoSegError(
            f"{what}: {path} holds Python objects other than plain weights, which could run code when "
            f"loaded; GeoSeg refuses to load it ({reason[:160]})."
        ) from None
    except Exception as e:  # noqa: BLE001  (zip/format errors of every kind)
        raise GeoSegError(
            f"{what}: {path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''})."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise GeoSegError(
            f"{what}: {path} is not a GeoSeg checkpoint (no '{FORMAT}' marker); use a .pt "
            "written by GeoSeg's training, or an ONNX model with a GeoSeg card."
        )
    try:
        card = json.loads(obj["card"])
    except (KeyError, TypeError, ValueError):
        raise GeoSegError(f"{what}: {path} has no readable model card.") from None
    obj["card"] = ModelCard.from_dict(card, what)
    return obj


def model_from_checkpoint(state: dict, what: str = "MODEL"):
    """Rebuild the card's architecture and load the weights (never the original encoder file)."""
    from ..models.registry import build_model
    from .options import ARCHITECTURES

    card: ModelCard = state["card"]
    arch = card.architecture
    if arch not in ARCHITECTURES:
        raise GeoSegError(f"{what}: the card names no known architecture ({arch!r}).")
    options = dict(card.architecture_options or {})
    if "encoder_weights" in options:
        options["encoder_weights"] = None  # the trained weights below replace them
    try:
        model = build_model(arch, card.in_channels, card.num_classes, **options)
        model.load_state_dict(state["state_dict"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise GeoSegError(f"{what}: the weights do not fit the card's architecture ({str(e)[:200]}).") from None
    return model


def save_onnx(
    path: str,
    model: Any,
    card: ModelCard,
    what: str = "OUTPUT_MODEL",
    cancelled: IsCancelled = lambda: False,
    fmt: str = "geoseg",
) -> None:
    """`model` as ONNX carrying `card` (metadata_props[CARD_KEY]), written to a partial file beside
    `path` and moved over it only once the ONNX checker accepts it (models.export does the export).
    `fmt` "deepness": fixed chip size, probabilities and Deepness's metadata keys as well
    (core.foreign.deepness_metadata). Cancelled (or a signal, core.signals) while it was written:
    the partial file is removed."""
    from ..models.export import export_onnx

    meta = {CARD_KEY: card.to_json()}
    fixed, head = None, "logits"
    if fmt == "deepness":
        from .foreign import deepness_metadata

        meta.update(deepness_metadata(card))
        fixed, head = card.chip_size, "sigmoid" if card.num_classes == 2 else "softmax"
    with staged_path(path, what, replace=True) as tmp:
        export_onnx(model, card.in_channels, tmp, metadata=meta, fixed_size=fixed, head=head)
        if cancelled():
            raise Cancelled(f"Cancelled while writing {path}; nothing was written.")
