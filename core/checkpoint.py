"""`.pt` files: weights and the card only, loaded with `weights_only=True` so a model file
cannot run code. Written to a temporary name and renamed, so a file is complete or absent."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from .card import validate_card
from .errors import GeoSegError
from .staging import raise_if_disk_full

FORMAT = "geoseg-checkpoint"
VERSION = 1
PARTIAL = ".partial-"  # temporary files are ".NAME.partial-XXXX" beside NAME


@contextmanager
def atomic_write(path: str, mode: str = "wb", **kw: Any) -> Iterator[IO]:
    """Open a hidden temporary file beside `path`; on success flush it to disk (fsync) and rename
    it over `path`, then sync the folder. A crash or kill at any moment leaves either the old
    complete file or the new complete one, never a truncated mix; an error removes the temp."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{PARTIAL}", dir=folder)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise_if_disk_full("OUTPUT_MODEL", e)  # torch.save reports a full disk as an obscure RuntimeError
        raise
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_partials(path: str) -> list[str]:
    """Remove the temporary files a killed writer of `path` left behind; return their names."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    prefix = f".{os.path.basename(path)}{PARTIAL}"
    removed = []
    for name in os.listdir(folder):
        if name.startswith(prefix) and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `atomic_write`."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


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
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # CRC of every member: torch itself does not notice flipped bytes
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            bad = f"({e})"
        if bad is not None:
            raise GeoSegError(f"{what}: {path} is damaged (checksum mismatch in {bad}); it cannot be used. "
                              "Restore it from a backup, or start a new run.")
    elif head[:1] != b"\x80":  # neither torch's zip format nor a raw pickle
        if head[:2] == b"PK":
            raise GeoSegError(f"{what}: {path} is truncated or damaged (its zip directory is missing); it "
                              "cannot be used. Restore it from a backup, or start a new run.")
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
    obj["card"] = validate_card(card, what)
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
