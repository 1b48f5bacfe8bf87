"""Models without a GeoSeg card: Deepness-format ONNX files, and bare ONNX files run with a card the
user supplies (`CARD`). Also the other direction: the metadata that lets Deepness run a GeoSeg model.

Deepness (PUTvision/qgis-plugin-deepness) keeps its settings in ONNX `metadata_props`, each value
JSON: `model_type` "Segmentor", `class_names` ({"0": name, …} by output channel, or one such dict
per output), `resolution` (cm/px), `tile_size`/`tiles_size`, `tiles_overlap` (%),
`standardization_mean`/`_std`, `seg_thresh`, `seg_small_segment`. Its input is NCHW float32 holding
the first C raster bands ×1/255, then (x − mean)/std; its output holds probabilities: softmax
`[B, C, H, W]`, or one sigmoid channel `[B, 1, H, W]` / `[B, H, W]` (classes background and
foreground). Tile size and batch are often fixed in the graph.

`read_onnx_model` turns any of these into what `segment` needs: a validated `ModelCard` (raw-unit
normalisation mean·255, std·255; class value = output channel), where each card value came from
(`provenance`), and `ModelIO`, how to run the graph as it is (fixed tile size and batch, which
output, probabilities or logits).
"""

from __future__ import annotations

import ast
import colorsys
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .card import CARD_KEY, ModelCard
from .classes import PALETTE
from .errors import GeoSegError, first_line

DEEPNESS = "from Deepness metadata"
SHAPE = "from the model's input and output shapes"
ASSUMED = "assumed"
CARD_FILE = "from the CARD file"
GEOSEG = "from the GeoSeg card"
DEEPNESS_KEYS = (
    "model_type",
    "class_names",
    "resolution",
    "tiles_size",
    "tile_size",
    "tiles_overlap",
    "standardization_mean",
    "standardization_std",
    "seg_thresh",
    "seg_small_segment",
)
DEFAULT_CHIP = 256  # a model with a dynamic input size and no tile_size in its metadata
CARD_FIELDS = "classes, bands, in_channels, chip_size, normalization"


@dataclass(frozen=True)
class ModelIO:
    """How to run an ONNX graph as it is. `activation` is what the graph applies to its output
    ("none": logits; "softmax"/"sigmoid": probabilities); `single` marks one output channel (or a
    [B, H, W] output), which becomes two classes: background (1 − p) and foreground (p)."""

    fixed_size: int | None = None  # the input's fixed height = width
    fixed_batch: int | None = None  # the input's fixed batch size
    output: int = 0  # index of the graph output used
    outputs: int = 1
    activation: str = "none"
    single: bool = False
    threshold: float | None = None  # the model's own seg_thresh (used only when asked for)

    @property
    def probabilities(self) -> bool:
        """The backend hands over probabilities (not logits): softmax output, or any single channel."""
        return self.activation == "softmax" or self.single


@dataclass(frozen=True)
class OpenedModel:
    """A model's card, where its values came from, and how to run it."""

    card: ModelCard
    io: ModelIO = field(default_factory=ModelIO)
    source: str = GEOSEG
    provenance: Mapping[str, str] = field(default_factory=dict)  # card field → one of the phrases above
    notes: tuple[str, ...] = ()  # metadata GeoSeg reads but does not apply (e.g. seg_small_segment)

    @property
    def foreign(self) -> bool:
        """Not a GeoSeg card: the graph's fixed shapes rule, and extra raster bands are left out."""
        return self.source != GEOSEG


# ---------------------------------------------------------------- the graph
def _dims(value_info: Any) -> list[int | None]:
    """Fixed dimensions as ints, symbolic ones as None ([] when the shape is unknown)."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


@dataclass(frozen=True)
class Graph:
    """What GeoSeg reads of an ONNX graph without running it."""

    input_dims: list[int | None]
    input_float: bool
    output_names: list[str]
    output_dims: list[list[int | None]]
    output_ops: list[str]  # operator producing each output ("" when it is a graph input or unknown)
    meta: dict[str, str]

    @property
    def channels(self) -> int | None:
        return self.input_dims[1] if len(self.input_dims) == 4 else None

    @property
    def fixed_size(self) -> int | None:
        d = self.input_dims
        return d[2] if len(d) == 4 and d[2] is not None and d[2] == d[3] else None


def read_graph(model_path: str, what: str = "MODEL") -> Graph:
    import onnx

    try:
        model = onnx.load(model_path, load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001  (protobuf and checker errors of every kind)
        raise GeoSegError(f"{what}: {model_path} is not a valid ONNX model ({first_line(e)}).") from None
    g = model.graph
    initializers = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    if len(inputs) != 1:
        raise GeoSegError(f"{what}: the model has {len(inputs)} inputs; GeoSeg runs models with one image input.")
    producers = {name: n.op_type for n in g.node for name in n.output}
    return Graph(
        _dims(inputs[0]),
        inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT,
        [o.name for o in g.output],
        [_dims(o) for o in g.output],
        [producers.get(o.name, "") for o in g.output],
        {p.key: p.value for p in model.metadata_props},
    )


def is_deepness(meta: Mapping[str, str]) -> bool:
    return "model_type" in meta or "class_names" in meta


def _check_input(graph: Graph, model_path: str, what: str) -> None:
    d = graph.input_dims
    if len(d) != 4 or d[1] is None:
        shape = [x if x is not None else "?" for x in d] or "unknown"
        raise GeoSegError(
            f"{what}: the model's input has shape {shape}; GeoSeg needs [batch, channels, height, width] "
            "with a fixed number of channels."
        )
    if not graph.input_float:
        raise GeoSegError(f"{what}: the model's input is not float32; GeoSeg feeds float32 tiles.")
    if d[2] is not None and d[3] is not None and d[2] != d[3]:
        raise GeoSegError(f"{what}: the model's input is {d[2]} × {d[3]} pixels; GeoSeg needs square tiles.")


def model_io(graph: Graph, output: int, deepness: bool, threshold: float | None = None) -> ModelIO:
    """How to run `graph`'s output `output` (checked to exist)."""
    n = len(graph.output_names)
    if not 0 <= output < n:
        names = ", ".join(f"{i} {name}" for i, name in enumerate(graph.output_names))
        raise GeoSegError(f"OUTPUT_INDEX {output}: the model has {n} output(s): {names}.", param="OUTPUT_INDEX")
    dims, op = graph.output_dims[output], graph.output_ops[output]
    single = len(dims) == 3 or (len(dims) == 4 and dims[1] == 1)
    activation = {"Softmax": "softmax", "Sigmoid": "sigmoid"}.get(op, "none")
    if deepness and activation == "none":  # Deepness's contract: probabilities
        activation = "sigmoid" if single else "softmax"
    d = graph.input_dims
    return ModelIO(graph.fixed_size, d[0] if d else None, output, n, activation, single, threshold)


# ---------------------------------------------------------------- Deepness metadata
EXAMPLES = {"model_type": '"Segmentor"', "class_names": '{"0": "background", "1": "building"}'}


def _value(meta: Mapping[str, str], key: str, what: str) -> Any:
    """A metadata value: JSON, or (as Deepness also accepts) a Python literal such as {0: 'a'};
    model_type may also be a bare word."""
    text = meta[key]
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if key == "model_type" and text.strip().isidentifier():
            return text.strip()
        raise GeoSegError(
            f"{what}: Deepness metadata {key} is not JSON (got {text[:60]!r}); e.g. {key} = "
            f"{EXAMPLES.get(key, '0.5')}."
        ) from None


def _number(meta: Mapping[str, str], key: str, what: str, positive: bool = True) -> float | None:
    if key not in meta:
        return None
    v = _value(meta, key, what)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or (positive and v <= 0):
        raise GeoSegError(
            f"{what}: Deepness metadata {key} must be a {'positive ' if positive else ''}number (got {v!r})."
        )
    return float(v)


def _class_names(meta: Mapping[str, str], output: int, what: str) -> list[str]:
    names = _value(meta, "class_names", what)
    if isinstance(names, list):
        if not names or not all(isinstance(d, dict) for d in names):
            raise GeoSegError(
                f'{what}: Deepness metadata class_names must be an object {{"0": name, …}} or a list of such '
                f"objects, one per output (got {repr(names)[:60]})."
            )
        if output >= len(names):
            raise GeoSegError(
                f"OUTPUT_INDEX {output}: Deepness metadata class_names names classes for {len(names)} output(s) only.",
                param="OUTPUT_INDEX",
            )
        names = names[output]
    if not isinstance(names, dict) or not names:
        raise GeoSegError(
            f'{what}: Deepness metadata class_names must be an object {{"0": name, …}} keyed by output channel '
            f"(got {repr(names)[:60]})."
        )
    try:
        ordered = sorted((int(k), v) for k, v in names.items())
    except (TypeError, ValueError):
        raise GeoSegError(f"{what}: Deepness metadata class_names keys must be channel numbers 0, 1, 2, ….") from None
    if [k for k, _ in ordered] != list(range(len(ordered))):
        raise GeoSegError(
            f"{what}: Deepness metadata class_names keys must be the consecutive channels 0, 1, 2, … "
            f"(got {[k for k, _ in ordered]})."
        )
    if not all(isinstance(v, str) and v for _, v in ordered):
        raise GeoSegError(f"{what}: Deepness metadata class_names values must be non-empty names.")
    return [v for _, v in ordered]


def _standardization(meta: Mapping[str, str], channels: int, what: str) -> tuple[list[float], list[float]] | None:
    keys = ("standardization_mean", "standardization_std")
    if not any(k in meta for k in keys):
        return None
    if not all(k in meta for k in keys):
        raise GeoSegError(f"{what}: Deepness metadata has only one of standardization_mean and standardization_std.")
    out = []
    for key in keys:
        v = _value(meta, key, what)
        v = [v] if isinstance(v, int | float) and not isinstance(v, bool) else v
        ok = isinstance(v, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v
        )
        if not ok or len(v) not in (1, *range(channels, channels + 2)):
            raise GeoSegError(
                f"{what}: Deepness metadata {key} must be a list of {channels} numbers, one per input channel "
                f"(got {repr(v)[:60]})."
            )
        out.append([float(x) for x in (v * channels if len(v) == 1 else v[:channels])])
    if any(s <= 0 for s in out[1]):
        raise GeoSegError(f"{what}: Deepness metadata standardization_std must be positive (got {out[1]}).")
    return out[0], out[1]


def distinct_colors(names: list[str]) -> list[str]:
    """Black for a background class, the shared palette for the others, then golden-angle hues."""
    out, k = [], 0
    for name in names:
        if name.strip().lower() in ("background", "_background_", "bg", "other", "others", "none"):
            out.append("#000000")
            continue
        if k < len(PALETTE):
            out.append(PALETTE[k])
        else:
            r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65, 0.9)
            out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
        k += 1
    return out


def _classes(names: list[str]) -> list[dict]:
    colors = distinct_colors(names)
    if len(set(colors)) < len(colors):  # two "background"-like names: keep colours distinct
        colors = [c if c not in colors[:i] else PALETTE[(i + 7) % len(PALETTE)] for i, c in enumerate(colors)]
    return [{"value": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, colors, strict=True))]


def _output_channels(graph: Graph, io: ModelIO) -> int | None:
    dims = graph.output_dims[io.output]
    return 2 if io.single else (dims[1] if len(dims) == 4 else None)


def _deepness_names(graph: Graph, io: ModelIO, what: str) -> tuple[list[str], str]:
    """Class names by output channel, and where they came from."""
    meta, output = graph.meta, io.output
    k = _output_channels(graph, io)
    if "class_names" in meta:
        names = _class_names(meta, output, what)
        if io.single and len(names) == 1:
            names = ["background", names[0]]
        if k is not None and len(names) != k:
            raise GeoSegError(
                f"{what}: Deepness metadata class_names lists {len(names)} classes, but output {output} has "
                f"{graph.output_dims[output][1]} channels."
            )
        return names, DEEPNESS + " (channel index = class value; colours generated)"
    if k is not None and k >= 2:
        names = ["background" if io.single and i == 0 else f"class {i}" for i in range(k)]
        return names, f"{ASSUMED} (one per output channel; no class_names)"
    raise GeoSegError(
        f"{what}: the model's output {output} has no fixed channel count and its metadata no class_names; "
        "add class_names, or give CARD."
    )


def _deepness_tiling(meta: Mapping[str, str], chip: int, what: str) -> dict[str, int] | None:
    """GeoSeg's recommended tiling from tiles_overlap (%): crop half the overlap, stride the rest."""
    overlap = _number(meta, "tiles_overlap", what, positive=False)
    if overlap is None:
        return None
    if not 0 <= overlap < 100:
        raise GeoSegError(f"{what}: Deepness metadata tiles_overlap must be a percentage 0–99 (got {overlap:g}).")
    crop = min(int(round(chip * overlap / 200.0)), (chip - 1) // 2)
    return {"crop": crop, "stride": max(1, chip - 2 * crop)}


def deepness_card(graph: Graph, output: int = 0, what: str = "MODEL") -> OpenedModel:
    """The card and run settings of a Deepness-format model (GeoSeg's Deepness reader)."""
    meta = graph.meta
    if "model_type" in meta:
        kind = _value(meta, "model_type", what)
        if not isinstance(kind, str) or kind.strip().lower() != "segmentor":
            raise GeoSegError(
                f"{what}: the model is a Deepness {kind!r} model; GeoSeg runs segmentation models "
                '(model_type "Segmentor").'
            )
    seg_thresh = _number(meta, "seg_thresh", what, positive=False)
    if seg_thresh is not None and not 0 <= seg_thresh <= 1:
        raise GeoSegError(f"{what}: Deepness metadata seg_thresh must be a probability 0–1 (got {seg_thresh:g}).")
    io = model_io(graph, output, True, seg_thresh)
    channels = graph.channels
    assert channels is not None  # _check_input
    prov: dict[str, str] = {"in_channels": SHAPE, "bands": f"{ASSUMED} (the first {channels} raster bands)"}
    names, prov["classes"] = _deepness_names(graph, io, what)
    tile = _number(meta, "tile_size", what) or _number(meta, "tiles_size", what)
    if io.fixed_size:
        chip, prov["chip_size"] = io.fixed_size, SHAPE + " (fixed)"
    elif tile:
        chip, prov["chip_size"] = int(tile), DEEPNESS
    else:
        chip, prov["chip_size"] = DEFAULT_CHIP, ASSUMED
    std = _standardization(meta, channels, what)
    mean, sd = std if std else ([0.0] * channels, [1.0] * channels)
    prov["normalization"] = (DEEPNESS if std else ASSUMED) + " (×1/255, then (x − mean)/std; in raw units ×255)"
    card: dict[str, Any] = {
        "classes": _classes(names),
        "bands": list(range(1, channels + 1)),
        "in_channels": channels,
        "chip_size": chip,
        "normalization": {"mean": [m * 255.0 for m in mean], "std": [s * 255.0 for s in sd]},
    }
    resolution = _number(meta, "resolution", what)
    if resolution:
        card["pixel_size"] = [resolution / 100.0, resolution / 100.0]
        prov["pixel_size"] = DEEPNESS + f" (resolution {resolution:g} cm/px, in metres)"
    recommended = _deepness_tiling(meta, chip, what)
    if recommended:
        card["recommended"] = recommended
        prov["recommended"] = DEEPNESS + f" (tiles_overlap {meta['tiles_overlap']} %)"
    notes = []
    if seg_thresh is not None:
        notes.append(f"seg_thresh {seg_thresh:g} (applied only with MODEL_THRESHOLD)")
    small = _number(meta, "seg_small_segment", what, positive=False)
    if small:
        notes.append(f"seg_small_segment {small:g} px (not applied)")
    model = ModelCard.from_dict(card, what)
    return OpenedModel(model, io, "Deepness metadata", prov, tuple(notes))


# ---------------------------------------------------------------- a user's card
def example_card(graph: Graph | None = None) -> str:
    """A card for `graph` as one line of JSON: what to put in a CARD file."""
    c = (graph.channels if graph else None) or 3
    k = 2
    if graph and graph.output_dims and len(graph.output_dims[0]) == 4 and (graph.output_dims[0][1] or 0) > 1:
        k = graph.output_dims[0][1] or 2
    names = ["background"] + [f"class {i}" for i in range(1, k)]
    return json.dumps(
        {
            "classes": _classes(names),
            "bands": list(range(1, c + 1)),
            "in_channels": c,
            "chip_size": (graph.fixed_size if graph else None) or DEFAULT_CHIP,
            "normalization": {"mean": [0] * c, "std": [255] * c},
        }
    )


def card_file(path: str, graph: Graph | None = None) -> ModelCard:
    """The CARD parameter: a JSON file holding card fields."""
    if os.path.isdir(path):
        raise GeoSegError(f"CARD: {path} is a folder; give a JSON file with the card fields.", param="CARD")
    if not os.path.isfile(path):
        raise GeoSegError(
            f"CARD: file not found: {path}. Write a JSON file with the card fields ({CARD_FIELDS}), "
            f"e.g. {example_card(graph)}",
            param="CARD",
        )
    try:
        with open(path, "rb") as f:
            text = f.read(4_000_000)
    except OSError as e:
        raise GeoSegError(f"CARD: cannot read {path} ({e.strerror}).", param="CARD") from None
    try:
        return ModelCard.from_json(text, path, "CARD")
    except GeoSegError as e:
        raise GeoSegError(str(e), param="CARD") from None


def read_onnx_model(model_path: str, card_path: str | None = None, output: int = 0, what: str = "MODEL") -> OpenedModel:
    """An ONNX model's card and run settings: from CARD when given, else its GeoSeg card, else its
    Deepness metadata; a model with none of them is refused with an example card to supply."""
    graph = read_graph(model_path, what)
    _check_input(graph, model_path, what)
    deep = is_deepness(graph.meta)
    if card_path:
        card = card_file(card_path, graph)
        if card.in_channels != graph.channels:
            raise GeoSegError(
                f"CARD: in_channels is {card.in_channels}, but the model's input has {graph.channels} channels.",
                param="CARD",
            )
        thresh = _number(graph.meta, "seg_thresh", what, positive=False) if deep else None
        io = model_io(graph, output, deep, thresh)
        prov = {k: CARD_FILE for k in card.to_dict()}
        return OpenedModel(card, io, "CARD file", prov)
    if CARD_KEY in graph.meta:
        card = ModelCard.from_json(graph.meta[CARD_KEY], model_path, what)
        thresh = _number(graph.meta, "seg_thresh", what, positive=False) if deep else None
        io = model_io(graph, output, deep, thresh)
        return OpenedModel(card, io, GEOSEG, {k: GEOSEG for k in card.to_dict()})
    if deep:
        return deepness_card(graph, output, what)
    raise GeoSegError(
        f"{what}: {model_path} carries no GeoSeg model card (ONNX metadata_props key '{CARD_KEY}') and no "
        f"Deepness metadata; give CARD a JSON file with the card fields ({CARD_FIELDS}), e.g. "
        f"{example_card(graph)}",
        param="CARD",
    )


# ---------------------------------------------------------------- GeoSeg → Deepness
def metric_resolution_cm(card: ModelCard) -> float | None:
    """The card's pixel size in cm when its CRS is projected with a linear unit (else None)."""
    if not card.pixel_size or not card.crs or not card.crs.wkt:
        return None
    from osgeo import osr

    srs = osr.SpatialReference()
    if srs.ImportFromWkt(card.crs.wkt) != 0 or not srs.IsProjected():
        return None
    return float(card.pixel_size[0]) * srs.GetLinearUnits() * 100.0


def deepness_metadata(card: ModelCard) -> dict[str, str]:
    """Deepness's metadata_props for a GeoSeg model exported with fixed chip size and probabilities."""
    chip = card.chip_size
    names = [c.name for c in card.classes]
    stride = card.recommended.stride if card.recommended else chip // 2
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): n for i, n in enumerate(names)},
        "tile_size": chip,
        "tiles_size": chip,
        "tiles_overlap": int(round(100.0 * max(0, chip - stride) / chip)),
        "standardization_mean": [m / 255.0 for m in card.normalization.mean],
        "standardization_std": [s / 255.0 for s in card.normalization.std],
        "seg_thresh": 0.5,
        "seg_small_segment": 0,
    }
    cm = metric_resolution_cm(card)
    if cm is not None:
        meta["resolution"] = round(cm, 6)
    return {k: json.dumps(v) for k, v in meta.items()}
