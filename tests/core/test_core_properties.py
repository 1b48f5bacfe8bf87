"""Hypothesis properties of the tile grid of tiled prediction and of the model-card parser.

(The chip grid's axis properties and coverage are in test_core_grid.py.) Example counts are
kept modest so the suite stays fast."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geoseg.core.card import SCHEMA, ModelCard, card_errors, card_from_json, validate_card
from geoseg.core.errors import GeoSegError
from geoseg.core.grid import make_grid, make_tiling

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- chip grid
@FAST
@given(
    w=st.integers(1, 300),
    h=st.integers(1, 300),
    chip=st.integers(1, 128),
    sx=st.integers(1, 200),
    sy=st.integers(1, 200),
)
def test_grid_windows_are_unique_inside_and_chip_sized_for_any_stride(w, h, chip, sx, sy):
    g = make_grid(w, h, chip, sx, sy)
    wins = list(g)
    assert len(wins) == len(g) == len({(x.xoff, x.yoff) for x in wins}), "no duplicates"
    for x in wins:
        assert 0 <= x.xoff and x.xoff + x.width <= w and 0 <= x.yoff and x.yoff + x.height <= h, "inside bounds"
        assert (x.width + x.pad_x, x.height + x.pad_y) == (chip, chip), "every chip is chip-sized (padded)"
        assert x.pad_x == max(0, chip - w) and x.pad_y == max(0, chip - h)
    assert wins == sorted(wins, key=lambda x: (x.yoff, x.xoff)), "row-major"
    if sx <= chip and sy <= chip:
        cover = np.zeros((h, w), bool)
        for x in wins:
            cover[x.yoff : x.yoff + x.height, x.xoff : x.xoff + x.width] = True
        assert cover.all(), "every pixel is in some chip"


# ---------------------------------------------------------------- tiled prediction
@st.composite
def tilings(draw):
    chip = draw(st.integers(8, 96))
    crop = draw(st.integers(0, (chip - 1) // 2))
    top = chip - 2 * crop
    return (
        draw(st.integers(1, 400)),
        draw(st.integers(1, 400)),
        chip,
        draw(st.integers(1, top)),
        draw(st.integers(1, top)),
        crop,
    )


@FAST
@given(tilings())
def test_tile_centres_cover_every_pixel_exactly_once(args):
    w, h, chip, sx, sy, crop = args
    t = make_tiling(w, h, chip, sx, sy, crop)
    assert t.tiles == len(t.xs) * len(t.ys) and len(set(t.xs)) == len(t.xs) and len(set(t.ys)) == len(t.ys)
    for length, origins, spans in ((w, t.xs, t.keep_x), (h, t.ys, t.keep_y)):
        assert origins == sorted(origins) and origins[0] == 0
        assert all(o + min(chip, length) <= length for o in origins), "tiles inside the raster"
        for o, (a, b) in zip(origins, spans, strict=True):
            assert a < b, "every tile keeps something"
            # only the centre: `crop` pixels in from every edge that is not the raster's own edge
            assert a >= (o + crop if o > 0 else 0)
            assert b <= (o + chip - crop if o + chip < length else length)
    count = np.zeros((h, w), np.int32)
    for y0, y1 in t.keep_y:
        for x0, x1 in t.keep_x:
            count[y0:y1, x0:x1] += 1
    assert (count == 1).all(), "each pixel comes from exactly one tile"


@FAST
@given(
    w=st.integers(-5, 300),
    h=st.integers(1, 300),
    chip=st.integers(-4, 80),
    sx=st.integers(-3, 90),
    sy=st.integers(-3, 90),
    crop=st.integers(-3, 50),
)
def test_tiling_parameters_are_either_valid_or_a_named_error(w, h, chip, sx, sy, crop):
    assume(w >= 1)
    try:
        t = make_tiling(w, h, chip, sx, sy, crop)
    except GeoSegError as e:
        assert re.match(r"^(CHIP_SIZE|CROP|STRIDE_X|STRIDE_Y) ", str(e)), str(e)
        return
    assert chip >= 8 and 0 <= crop and 2 * crop < chip and 1 <= sx <= chip - 2 * crop and 1 <= sy <= chip - 2 * crop
    assert t.keep_x[-1][1] == w and t.keep_y[-1][1] == h


# ---------------------------------------------------------------- model card
@st.composite
def cards(draw) -> dict:
    """Valid cards: 2-8 classes with distinct values, 1-6 bands, any extra writer keys."""
    values = draw(st.lists(st.integers(0, 254), min_size=2, max_size=8, unique=True))
    n = draw(st.integers(1, 6))
    finite = st.floats(-1e6, 1e6, allow_nan=False)
    card = {
        "classes": [
            {
                "value": v,
                "name": draw(st.text(min_size=1, max_size=8)),
                "color": "#" + draw(st.from_regex(r"[0-9a-fA-F]{6}", fullmatch=True)),
            }
            for v in values
        ],
        "bands": draw(st.lists(st.integers(1, 20), min_size=n, max_size=n)),
        "in_channels": n,
        "chip_size": draw(st.integers(8, 1024)),
        "normalization": {
            "mean": draw(st.lists(finite, min_size=n, max_size=n)),
            "std": draw(st.lists(st.floats(1e-6, 1e6), min_size=n, max_size=n)),
        },
    }
    if draw(st.booleans()):
        crop = draw(st.integers(0, 16))
        card["recommended"] = {"crop": crop, "stride": draw(st.integers(1, 64)), "receptive_field_radius": crop}
    if draw(st.booleans()):
        card["pixel_size"] = draw(st.lists(st.floats(1e-3, 1e4), min_size=2, max_size=2))
    if draw(st.booleans()):
        card["x_extra"] = draw(json_values)
    return card


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def paths(obj, prefix=()) -> list[tuple]:
    """Every place in a nested card: dict keys and list indices."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def mutated_cards(draw) -> dict:
    card = draw(cards())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(card) or [()]))
        parent = card
        for k in where[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "delete", "add", "swap_type"]))
        key = where[-1]
        if op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from([*SCHEMA.fields, "value", "name", "color", "mean", "std", "zz"]))] = draw(
                json_values
            )
        elif op == "swap_type":
            parent[key] = {int: str, float: str, str: len, list: tuple, dict: list, bool: int}.get(
                type(parent[key]), lambda x: None
            )(parent[key])
            if isinstance(parent[key], tuple):
                parent[key] = list(parent[key])[::-1] + [None]
        else:
            parent[key] = draw(json_values)
    return card


FIELD = re.compile(r"card field ([A-Za-z_][\w]*)((?:\[\d+\]|\.[A-Za-z_]\w*)*) ")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cards())
def test_a_mutated_card_is_valid_or_refused_naming_a_field(card):
    original = copy.deepcopy(card)
    try:
        out = validate_card(card)
    except GeoSegError as e:
        text = str(e)
        assert text.startswith("MODEL: card field ") and "\n" not in text
        named = FIELD.findall(text)
        assert named and all(top in SCHEMA.fields for top, _ in named), text
        assert card == original or _has_nan(original), "validation never changes the card"
        return
    # accepted: everything the engine relies on holds
    n = out["in_channels"]
    assert len(out["bands"]) == len(out["normalization"]["mean"]) == len(out["normalization"]["std"]) == n
    assert all(math.isfinite(s) and s > 0 for s in out["normalization"]["std"])
    values = [c["value"] for c in out["classes"]]
    assert len(set(values)) == len(values) >= 2 and all(type(v) is int and 0 <= v <= 254 for v in values)
    assert out["chip_size"] >= 8 and type(out["chip_size"]) is int


def _has_nan(obj) -> bool:  # NaN != NaN, so a card holding one never compares equal to its copy
    if isinstance(obj, float):
        return math.isnan(obj)
    if isinstance(obj, dict):
        return any(_has_nan(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_nan(v) for v in obj)
    return False


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cards())
def test_the_published_json_schema_accepts_every_card_the_validator_accepts(card):
    """The JSON Schema is the weaker of the two (it cannot compare fields): never stricter."""
    import jsonschema  # Debian's python3-jsonschema (make setup installs it)

    from geoseg.core.card import json_schema

    if not card_errors(card):
        assert jsonschema.Draft202012Validator(json_schema()).is_valid(card), card


@settings(max_examples=60, deadline=None)
@given(cards())
def test_card_round_trips_through_json(card):
    assert validate_card(card) is card
    text = json.dumps(card)
    assert json.dumps(card_from_json(text, "m.onnx")) == text  # compared as text: NaN != NaN in extras
    assert json.dumps(card_from_json(text.encode("utf-8"), "m.onnx")) == text
    typed = ModelCard.from_json(text, "m.onnx")  # the typed card gives back the same JSON, plus its version
    expected = json.dumps({**card, "schema_version": 1}, sort_keys=True)
    assert json.dumps(typed.to_dict(), sort_keys=True) == expected
    assert json.dumps(json.loads(typed.to_json()), sort_keys=True) == expected


@FAST
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_arbitrary_text_is_a_card_or_a_geoseg_error(text):
    try:
        card_from_json(text, "m.onnx")
    except GeoSegError as e:
        assert str(e).startswith("MODEL: ")
