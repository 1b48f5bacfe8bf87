"""The model card: everything needed to use a model correctly later, travelling inside the
`.pt` checkpoint and the ONNX file (metadata_props key `geoseg`).

`validate_card` is the single gate for cards read from files a user may have downloaded:
each wrong field gets its own message.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import GeoSegError

CARD_KEY = "geoseg"
COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


def _fail(field: str, problem: str) -> GeoSegError:
    return GeoSegError(f"Model card: '{field}' {problem}")


def validate_card(card: Any) -> dict:
    """Check the contract's fields (types, ranges, consistency); return the card."""
    if not isinstance(card, dict):
        raise GeoSegError("Model card: not a JSON object.")
    for key in ("classes", "bands", "in_channels", "chip_size", "normalization"):
        if key not in card:
            raise _fail(key, "is missing.")
    classes = card["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise _fail("classes", "must list at least 2 classes.")
    seen = set()
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            raise _fail(f"classes[{i}]", "must be an object with value, name and color.")
        v = c.get("value")
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 254:
            raise _fail(f"classes[{i}].value", f"must be an integer 0-254 (got {v!r}).")
        if v in seen:
            raise _fail(f"classes[{i}].value", f"repeats class value {v}.")
        seen.add(v)
        if not isinstance(c.get("name"), str) or not c["name"]:
            raise _fail(f"classes[{i}].name", "must be a non-empty string.")
        if not isinstance(c.get("color"), str) or not COLOR.match(c["color"]):
            raise _fail(f"classes[{i}].color", f"must be a colour like #1a2b3c (got {c.get('color')!r}).")
    n = card["in_channels"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _fail("in_channels", f"must be a positive integer (got {n!r}).")
    bands = card["bands"]
    if not isinstance(bands, list) or len(bands) != n or not all(isinstance(b, int) and b >= 1 for b in bands):
        raise _fail("bands", f"must list {n} band numbers (1-based), one per input channel.")
    chip = card["chip_size"]
    if not isinstance(chip, int) or isinstance(chip, bool) or chip < 8:
        raise _fail("chip_size", f"must be an integer of at least 8 pixels (got {chip!r}).")
    norm = card["normalization"]
    if not isinstance(norm, dict):
        raise _fail("normalization", "must be an object with mean and std.")
    for k in ("mean", "std"):
        vals = norm.get(k)
        if not isinstance(vals, list) or len(vals) != n:
            raise _fail(f"normalization.{k}", f"must list {n} numbers, one per band.")
        for v in vals:
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise _fail(f"normalization.{k}", f"must hold finite numbers (got {v!r}).")
            if k == "std" and v <= 0:
                raise _fail("normalization.std", f"must be positive (got {v!r}).")
    rec = card.get("recommended")
    if rec is not None:
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), int) for k in ("stride", "crop")):
            raise _fail("recommended", "must hold integer stride and crop.")
    return card


def card_from_json(text: str | bytes, source: str) -> dict:
    try:
        card = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise GeoSegError(f"Model card in {source} is not valid JSON ({e}).") from None
    return validate_card(card)


def recommended_tiling(chip: int, radius: int) -> dict[str, int]:
    """Crop ≥ the receptive-field radius makes tiles seam-free; capped at a quarter chip so
    that the stride (chip − 2·crop) keeps at least half the tile."""
    crop = min(radius, chip // 4)
    return {"crop": int(crop), "stride": int(chip - 2 * crop), "receptive_field_radius": int(radius)}
