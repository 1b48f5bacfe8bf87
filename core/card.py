"""The model card: everything needed to use a model correctly later, travelling inside the
`.pt` checkpoint and the ONNX file (metadata_props key `geoseg`).

A card may come from a file a user downloaded, so it is checked against one declarative
schema (`SCHEMA`) before anything uses it. The same schema is published as JSON Schema in
`docs/model_card.schema.json` (`json_schema()`, kept in sync by a test), and every wrong field
gets its own message naming its path, e.g. `card field classes[2].value must be an integer
0–254 (got 'x')`.

Everything else reads the card as a typed, frozen `ModelCard`, built in one place only:
`ModelCard.from_json` / `from_dict` migrate an older `schema_version`, validate against SCHEMA,
then build the record; `to_json` / `to_dict` give back the same JSON (unknown keys included).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .errors import GeoSegError

CARD_KEY = "geoseg"
SCHEMA_ID = "urn:geoseg:model-card:1"
SCHEMA_VERSION = 1  # the card layout this GeoSeg writes; a card without `schema_version` is version 1
MAX_MESSAGES = 6  # a garbled card can be wrong everywhere: name the first few fields


@dataclass(frozen=True)
class Spec:
    """One field of the card: its type and constraints. `length_of` ties an array's length to a
    top-level integer field (bands and normalisation lists have `in_channels` items); `unique`
    names a key that must differ between the objects of an array (class values)."""

    kind: str  # integer | number | string | boolean | array | object
    required: bool = False
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    finite: bool = True  # numbers: NaN and ±inf are refused
    pattern: str | None = None
    hint: str = ""  # how a pattern reads to a user
    min_length: int | None = None  # strings
    min_items: int | None = None
    max_items: int | None = None
    length_of: str | None = None
    unique: str | None = None
    items: Spec | None = None
    fields: dict[str, Spec] | None = None
    description: str = ""


def _int(lo: int | None = None, hi: int | None = None, **kw: Any) -> Spec:
    return Spec("integer", minimum=lo, maximum=hi, **kw)


def _per_band(description: str, **kw: Any) -> Spec:
    return Spec("array", required=True, length_of="in_channels", items=Spec("number", **kw), description=description)


CLASS = Spec(
    "object",
    fields={
        "value": _int(0, 254, required=True, description="class value written in the class map (255 is nodata)"),
        "name": Spec("string", required=True, min_length=1, description="class name shown in the legend"),
        "color": Spec(
            "string",
            required=True,
            pattern=r"^#[0-9a-fA-F]{6}$",
            hint="a colour like #1a2b3c",
            description="legend colour, #rrggbb",
        ),
    },
)

SCHEMA = Spec(
    "object",
    description="GeoSeg model card",
    fields={
        # the contract: a model cannot be used without these
        "classes": Spec(
            "array",
            required=True,
            min_items=2,
            max_items=255,
            unique="value",
            items=CLASS,
            description="one entry per model output channel, in output order",
        ),
        "bands": Spec(
            "array",
            required=True,
            length_of="in_channels",
            items=_int(1),
            description="1-based raster band numbers, one per input channel",
        ),
        "in_channels": _int(1, required=True, description="number of input channels"),
        "chip_size": _int(8, required=True, description="chip size the model was trained on (pixels)"),
        "normalization": Spec(
            "object",
            required=True,
            description="input = (pixel - mean) / std per band",
            fields={
                "mean": _per_band("per-band mean"),
                "std": _per_band("per-band standard deviation", exclusive_minimum=0),
            },
        ),
        # written by GeoSeg's training; optional for other writers
        "recommended": Spec(
            "object",
            nullable=True,
            description="tiling for seam-free prediction",
            fields={
                "crop": _int(0, required=True),
                "stride": _int(1, required=True),
                "receptive_field_radius": _int(0),
                "global_context": Spec(
                    "boolean",
                    description="the model's outputs depend on the whole input (e.g. image pooling), or on more "
                    "than the receptive-field probe could see; false: local within receptive_field_radius. "
                    "Missing (cards before GeoSeg issue 18): segment probes the model",
                ),
            },
        ),
        "architecture": Spec("string", description="GeoSeg architecture name (a .pt must name a known one)"),
        "architecture_options": Spec("object", description="options the architecture was built with"),
        "encoder": Spec(
            "object",
            nullable=True,
            description="the ResNet encoder and the pretrained weights it started from",
            fields={
                "name": Spec("string", required=True, min_length=1, description="resnet18, resnet34 or resnet50"),
                "weights": Spec("string", nullable=True, description="weight name, or file name; null: random"),
                "weights_sha256": Spec(
                    "string",
                    nullable=True,
                    pattern=r"^[0-9a-f]{64}$",
                    hint="64 lower-case hex digits",
                    description="sha256 of the weights file",
                ),
                "weights_url": Spec("string", nullable=True, description="where the named weights come from"),
                "weights_in_channels": _int(1, nullable=True, description="bands of the weights' first convolution"),
                "first_conv": Spec("string", nullable=True, description="how the first convolution was adapted"),
                "input_scaling": Spec(
                    "string", nullable=True, description="input scaling the weights were trained with"
                ),
                "licence": Spec("string", nullable=True, description="licence of the weights"),
            },
        ),
        "crs": Spec(
            "object",
            nullable=True,
            description="CRS of the training raster",
            fields={"wkt": Spec("string", nullable=True), "authid": Spec("string", nullable=True)},
        ),
        "pixel_size": Spec(
            "array",
            nullable=True,
            min_items=2,
            max_items=2,
            items=Spec("number", exclusive_minimum=0),
            description="training pixel size (x, y) in CRS units",
        ),
        "data_type": Spec("string", nullable=True, description="GDAL data type of the training raster"),
        "nodata": Spec(
            "array",
            nullable=True,
            items=Spec("number", nullable=True, finite=False),
            description="per-band nodata of the training raster",
        ),
        "background": _int(0, 254, nullable=True, description="background class value of the labels"),
        "ignore_background": Spec("boolean", description="trained without the background class"),
        "metrics": Spec(
            "object",
            nullable=True,
            description="validation metrics of the saved epoch",
            fields={
                "epoch": _int(1),
                "val_miou": Spec("number", nullable=True, minimum=0, maximum=1),
                "val_oa": Spec("number", nullable=True, minimum=0, maximum=1),
                "val_macro_f1": Spec("number", nullable=True, minimum=0, maximum=1),
                "per_class_iou": Spec("object"),
            },
        ),
        "training": Spec("object", description="training parameters"),
        "epochs_run": _int(0),
        "split": Spec("object", nullable=True, description="train/validation split of the chips"),
        "dataset_sha256": Spec(
            "string",
            pattern=r"^[0-9a-f]{64}$",
            hint="64 lower-case hex digits",
            description="hash of chips.csv and dataset.json",
        ),
        "geoseg_version": Spec("string"),
        "schema_version": _int(1, description="card layout version (missing: 1)"),
    },
)


# ---------------------------------------------------------------- validation
def _describe(s: Spec) -> str:
    """What a value of `s` must be, in words ("an integer 0–254")."""
    if s.kind == "integer":
        if s.minimum is not None and s.maximum is not None:
            text = f"an integer {s.minimum:g}–{s.maximum:g}"
        elif s.minimum is not None:
            text = "a positive integer" if s.minimum == 1 else f"an integer ≥ {s.minimum:g}"
        else:
            text = "an integer"
    elif s.kind == "number":
        text = "a finite number" if s.finite else "a number"
        if s.exclusive_minimum is not None:
            text += f" > {s.exclusive_minimum:g}"
        if s.minimum is not None and s.maximum is not None:
            text += f" in {s.minimum:g}–{s.maximum:g}"
    elif s.kind == "string":
        text = s.hint or ("a non-empty string" if s.min_length else "a string")
    elif s.kind == "boolean":
        text = "true or false"
    elif s.kind == "array":
        text = _describe_array(s)
    else:
        text = "an object"
    return text + (" or null" if s.nullable else "")


def _describe_array(s: Spec) -> str:
    """`_describe` for a list ("a list of at least 2 objects")."""
    text = "a list"
    if s.min_items is not None and s.min_items == s.max_items:
        text += f" of {s.min_items}"
    elif s.min_items:
        text += f" of at least {s.min_items}"
    if s.items is not None:
        text += f" of {_plural(s.items)}" if not s.min_items else f" {_plural(s.items)}"
    return text


def _plural(s: Spec) -> str:
    return {
        "integer": "integers",
        "number": "numbers",
        "string": "strings",
        "boolean": "booleans",
        "array": "lists",
        "object": "objects",
    }[s.kind]


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_ok(s: Spec, v: Any) -> bool:
    if s.kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if s.kind == "number":
        return isinstance(v, int | float) and not isinstance(v, bool) and (not s.finite or math.isfinite(v))
    return isinstance(v, {"string": str, "boolean": bool, "array": list, "object": dict}[s.kind])


def _check(s: Spec, v: Any, path: str, root: dict, errors: list[str]) -> None:
    """Append a message for every wrong field below `path` (depth first, in schema order)."""
    if v is None and s.nullable:
        return
    wrong = f"card field {path} must be {_describe(s)} (got {_got(v)})"
    if not _type_ok(s, v):
        errors.append(wrong)
        return
    if s.kind in ("integer", "number"):
        if (
            (s.minimum is not None and v < s.minimum)
            or (s.maximum is not None and v > s.maximum)
            or (s.exclusive_minimum is not None and v <= s.exclusive_minimum)
        ):
            errors.append(wrong)
    elif s.kind == "string":
        if (s.min_length and len(v) < s.min_length) or (s.pattern and not re.fullmatch(s.pattern, v)):
            errors.append(wrong)
    elif s.kind == "array":
        _check_array(s, v, path, root, errors)
    elif s.kind == "object" and s.fields:
        for name, sub in s.fields.items():
            where = f"{path}.{name}" if path else name
            if name not in v:
                if sub.required:
                    errors.append(f"card field {where} is missing (it must be {_describe(sub)})")
                continue
            _check(sub, v[name], where, root, errors)


def _check_array(s: Spec, v: list, path: str, root: dict, errors: list[str]) -> None:
    """`_check` for a list: its length (fixed, or that of a top-level field) and its items."""
    n: Any = root.get(s.length_of) if s.length_of else None  # a JSON value: _type_ok checks it
    length_spec = SCHEMA.fields.get(s.length_of) if s.length_of and SCHEMA.fields else None
    if length_spec is not None and _type_ok(length_spec, n) and n >= 1 and len(v) != n:
        errors.append(
            f"card field {path} must list {n} items, one per input channel ({s.length_of} is {n}; " f"got {len(v)})"
        )
    elif (s.min_items is not None and len(v) < s.min_items) or (s.max_items is not None and len(v) > s.max_items):
        errors.append(f"card field {path} must be {_describe(s)} (got {len(v)} item{'s' if len(v) != 1 else ''})")
    seen: set = set()
    for i, item in enumerate(v):
        before = len(errors)
        if s.items is not None:
            _check(s.items, item, f"{path}[{i}]", root, errors)
        if s.unique and len(errors) == before and isinstance(item, dict):
            key = item.get(s.unique)
            if key in seen:
                errors.append(f"card field {path}[{i}].{s.unique} repeats {_got(key)}, already used by an earlier item")
            seen.add(key)


def card_errors(card: Any) -> list[str]:
    """Every problem of `card`, one message per wrong field (empty: the card is valid)."""
    if not isinstance(card, dict):
        return [f"the model card must be a JSON object (got {type(card).__name__})"]
    errors: list[str] = []
    _check(SCHEMA, card, "", card, errors)
    return errors


def validate_card(card: Any, what: str = "MODEL") -> dict:
    """Check `card` against SCHEMA; return it, or raise one GeoSegError naming each wrong field."""
    errors = card_errors(card)
    if errors:
        more = len(errors) - MAX_MESSAGES
        text = "; ".join(errors[:MAX_MESSAGES]) + (f"; and {more} more" if more > 0 else "")
        raise GeoSegError(f"{what}: {text}.")
    return card


def _parse(text: str | bytes, source: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise GeoSegError(f"{what}: the model card in {source} is not valid JSON ({str(e)[:120]}).") from None


def card_from_json(text: str | bytes, source: str, what: str = "MODEL") -> dict:
    """Parse and validate, as a plain dict (the schema's own tests); everything else uses ModelCard."""
    return validate_card(_parse(text, source, what), what)


# ---------------------------------------------------------------- schema versions
Migration = Callable[[dict], dict]
# version n → a function turning a version-n card (a copy it may change) into a version n + 1 card;
# register one here whenever SCHEMA_VERSION goes up
MIGRATIONS: dict[int, Migration] = {}


def migrate(card: Any, what: str = "MODEL") -> Any:
    """`card` brought up to SCHEMA_VERSION through MIGRATIONS (a new dict; `card` is not changed).
    A card newer than this GeoSeg is refused; a malformed `schema_version` is left to validation."""
    if not isinstance(card, dict):
        return card
    version = card.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return card  # validation names it
    if version > SCHEMA_VERSION:
        raise GeoSegError(
            f"{what}: the model card has schema_version {version}, but this GeoSeg reads cards up to "
            f"version {SCHEMA_VERSION}; update GeoSeg to use this model."
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise GeoSegError(
                f"{what}: the model card has schema_version {version}, and this GeoSeg has no "
                f"migration from it to version {SCHEMA_VERSION}."
            )
        card = step(copy.deepcopy(card))
        version += 1
        card["schema_version"] = version
    return card


# ---------------------------------------------------------------- typed card
@dataclass(frozen=True, kw_only=True)
class _Record:
    """A JSON object as a frozen dataclass whose fields are named as its keys: lists become tuples
    and the keys in `_NESTED` records (a tuple of them when marked many). `extra` keeps the keys
    SCHEMA does not know and `nulls` the optional keys that were null, so `to_dict` gives back the
    same keys. Built only by `ModelCard.from_dict` (after validation), through `_build`."""

    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    nulls: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    _OWN: ClassVar[tuple[str, ...]] = ("extra", "nulls")
    _NESTED: ClassVar[dict[str, tuple[type[_Record], bool]]] = {}  # key → (record type, many)

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in _Record._OWN]

    @classmethod
    def _build(cls, d: Mapping[str, Any]) -> Any:
        keys = cls._keys()
        kw = {k: cls._typed(k, d[k]) for k in keys if d.get(k) is not None}
        return cls(
            **kw,
            extra={k: copy.deepcopy(v) for k, v in d.items() if k not in keys},
            nulls=frozenset(k for k in keys if k in d and d[k] is None),
        )

    @classmethod
    def _typed(cls, key: str, value: Any) -> Any:
        if key in cls._NESTED:
            kind, many = cls._NESTED[key]
            return tuple(kind._build(v) for v in value) if many else kind._build(value)
        return tuple(value) if isinstance(value, list) else copy.deepcopy(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: known keys in schema order, then the unknown ones (plain lists and dicts)."""
        out: dict[str, Any] = {}
        for key in self._keys():
            value = getattr(self, key)
            if value is None:
                if key in self.nulls:
                    out[key] = None
            elif key in self._NESTED:
                out[key] = [v.to_dict() for v in value] if self._NESTED[key][1] else value.to_dict()
            else:
                out[key] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        out.update(copy.deepcopy(dict(self.extra)))
        return out


@dataclass(frozen=True, kw_only=True)
class CardClass(_Record):
    """One model output channel: the value written in the class map, its legend name and colour."""

    value: int
    name: str
    color: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        h = self.color.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


@dataclass(frozen=True, kw_only=True)
class Normalization(_Record):
    """Model input = (pixel − mean) / std, per band."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class RecommendedTiling(_Record):
    """Tiling for seam-free prediction (see `recommended_tiling`)."""

    crop: int
    stride: int
    receptive_field_radius: int | None = None
    global_context: bool | None = None  # None: an older card; segment probes the model (core.tiling)


@dataclass(frozen=True, kw_only=True)
class CardCrs(_Record):
    """CRS of the training raster."""

    wkt: str | None = None
    authid: str | None = None


@dataclass(frozen=True, kw_only=True)
class CardMetrics(_Record):
    """Validation metrics of the saved epoch."""

    epoch: int | None = None
    val_miou: float | None = None
    val_oa: float | None = None
    val_macro_f1: float | None = None
    per_class_iou: dict[str, float | None] | None = None


@dataclass(frozen=True, kw_only=True)
class CardEncoder(_Record):
    """The ResNet encoder and the pretrained weights it started from (issue 15)."""

    name: str
    weights: str | None = None
    weights_sha256: str | None = None
    weights_url: str | None = None
    weights_in_channels: int | None = None
    first_conv: str | None = None
    input_scaling: str | None = None
    licence: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModelCard(_Record):
    """The model card as a typed record (see SCHEMA for what each field means). Build it with
    `from_json` / `from_dict` only: they migrate, validate and then construct it."""

    classes: tuple[CardClass, ...]
    bands: tuple[int, ...]
    in_channels: int
    chip_size: int
    normalization: Normalization
    recommended: RecommendedTiling | None = None
    architecture: str | None = None
    architecture_options: dict[str, Any] | None = None
    encoder: CardEncoder | None = None
    crs: CardCrs | None = None
    pixel_size: tuple[float, ...] | None = None
    data_type: str | None = None
    nodata: tuple[float | None, ...] | None = None
    background: int | None = None
    ignore_background: bool | None = None
    metrics: CardMetrics | None = None
    training: dict[str, Any] | None = None
    epochs_run: int | None = None
    split: dict[str, Any] | None = None
    dataset_sha256: str | None = None
    geoseg_version: str | None = None
    schema_version: int = SCHEMA_VERSION

    _NESTED: ClassVar[dict[str, tuple[type[_Record], bool]]] = {
        "classes": (CardClass, True),
        "normalization": (Normalization, False),
        "recommended": (RecommendedTiling, False),
        "crs": (CardCrs, False),
        "metrics": (CardMetrics, False),
        "encoder": (CardEncoder, False),
    }

    @classmethod
    def from_dict(cls, card: Any, what: str = "MODEL") -> ModelCard:
        """The one constructor: migrate to SCHEMA_VERSION, validate (a GeoSegError naming every wrong
        field, prefixed by `what`), then build. `card` itself is not changed."""
        card = migrate(card, what)
        validate_card(card, what)
        return cls._build(card)

    @classmethod
    def from_json(cls, text: str | bytes | dict, source: str = "the card", what: str = "MODEL") -> ModelCard:
        """`from_dict` of JSON text (a file's card; `source` names the file in the message) or of a dict."""
        return cls.from_dict(text if isinstance(text, dict) else _parse(text, source, what), what)

    def to_json(self) -> str:
        """The JSON GeoSeg writes (ONNX metadata_props[CARD_KEY], `.pt` checkpoints)."""
        return json.dumps(self.to_dict())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> dict[int, str]:
        """Class value → name."""
        return {c.value: c.name for c in self.classes}


# ---------------------------------------------------------------- JSON Schema
def _json_schema(s: Spec) -> dict:
    out: dict[str, Any] = {}
    if s.description:
        out["description"] = s.description
    out["type"] = [s.kind, "null"] if s.nullable else s.kind
    for key, value in (
        ("minimum", s.minimum),
        ("maximum", s.maximum),
        ("exclusiveMinimum", s.exclusive_minimum),
        ("pattern", s.pattern),
        ("minLength", s.min_length),
        ("minItems", s.min_items),
        ("maxItems", s.max_items),
    ):
        if value is not None:
            out[key] = value
    if s.length_of:  # JSON Schema cannot compare two fields: an annotation, checked by GeoSeg
        out["x-geoseg-length-equals"] = s.length_of
    if s.unique:
        out["x-geoseg-unique-key"] = s.unique
    if s.items is not None:
        out["items"] = _json_schema(s.items)
    if s.fields:
        out["properties"] = {name: _json_schema(sub) for name, sub in s.fields.items()}
        required = [name for name, sub in s.fields.items() if sub.required]
        if required:
            out["required"] = required
    return out


def json_schema() -> dict:
    """SCHEMA as JSON Schema (draft 2020-12); written to docs/model_card.schema.json."""
    body = _json_schema(SCHEMA)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "GeoSeg model card",
        **body,
        "$comment": "Generated from geoseg.core.card.SCHEMA. Writers may add keys. Not expressible here, and "
        "checked by GeoSeg: x-geoseg-length-equals (the list has as many items as that integer "
        "field), x-geoseg-unique-key (that key differs between the list's objects), and numbers "
        "being finite.",
    }


def recommended_tiling(chip: int, radius: int, probe_size: int | None = None) -> dict[str, Any]:
    """Crop ≥ the receptive-field radius makes tiles seam-free; capped at a quarter chip so
    that the stride (chip − 2·crop) keeps at least half the tile. `radius` comes from
    models.receptive.receptive_field_radius on a `probe_size` tile (training: min(chip, 256)),
    which returns its cap, probe_size // 2, for a model with global context or a wider field:
    such a model is marked `global_context`, and segment keeps its trained chip (core.tiling)."""
    crop = min(radius, chip // 4)
    probe = probe_size or min(chip, 256)
    return {
        "crop": int(crop),
        "stride": int(chip - 2 * crop),
        "receptive_field_radius": int(radius),
        "global_context": bool(radius >= probe // 2),
    }


if __name__ == "__main__":  # python -m geoseg.core.card > docs/model_card.schema.json
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
