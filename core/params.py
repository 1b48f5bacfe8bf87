# ruff: noqa: RUF009  (p() is dataclasses.field with metadata: evaluated once, on purpose)
"""Each step's parameters, defined once: a frozen dataclass whose fields carry their metadata.

A field's `metadata=P(...)` says how the parameter appears in the three front-ends: its Processing
name, its command-line flag (derived from the field name unless given), label, help (tooltip and
`--help`), kind, range, choices, and whether it is advanced or optional. `algorithms.base`,
`core.cli` and `ui.base_dialog` build their parameters from it, and tests/qgis/test_params_parity.py
checks that they agree. Fields without metadata (e.g. TrainParams.num_workers) are engine-only.

No qgis, torch or gdal imports: the plugin, the command line and pure-core tests all read this.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import GeoSegError
from .options import (
    ARCHITECTURE_CHOICES,
    BACKEND_CHOICES,
    CHIP_FORMAT_CHOICES,
    CLASS_WEIGHT_CHOICES,
    DEVICE_CHOICES,
    ENCODER_CHOICES,
    LOSS_CHOICES,
    MODE_CHOICES,
    ONNX_FORMAT_CHOICES,
    OUTPUT_GRID_CHOICES,
    RESAMPLING_CHOICES,
    RESOLUTION_CHOICES,
    SCHEDULE_CHOICES,
    SPLIT_METHOD_CHOICES,
    TTA_CHOICES,
)

__all__ = [
    "STEPS",
    "AssessParams",
    "ExportOnnxParams",
    "ExportParams",
    "P",
    "SegmentParams",
    "Spec",
    "TrainParams",
    "parse_json_object",
    "parse_model_options",
    "schema",
    "spec",
]

# kinds: values ...
VALUE_KINDS = ("int", "float", "bool", "enum", "string", "json", "extent")
# ... inputs (paths of existing data) and outputs (new paths)
INPUT_KINDS = ("raster", "vector", "field", "file", "folder")
OUTPUT_KINDS = ("raster_out", "vector_out", "file_out", "folder_out")
KINDS = VALUE_KINDS + INPUT_KINDS + OUTPUT_KINDS


@dataclass(frozen=True)
class P:
    """How one dataclass field appears in Processing, on the command line and in the dialogs."""

    name: str  # Processing parameter name (public contract), also the name in core's messages
    label: str  # Processing description (README tables); the dialog's label unless `short` is given
    help: str = ""  # tooltip in the dialog, help on the command line
    kind: str = ""  # one of KINDS; "" = from the field's type (int, float, bool, str → string, dict → json)
    cli: str = ""  # command-line flag; "" = "--" + field name without "_path", "_" → "-"
    aliases: tuple[str, ...] = ()  # further accepted flags (older spellings)
    short: str = ""  # the dialog's form label
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (value, label); Processing enum index = position
    advanced: bool = False
    optional: bool = False  # may be left empty (None); fields without a default are required
    file_filter: str = ""  # "GeoSeg models (*.onnx *.pt)"
    extension: str = ""  # single extension Processing checks for a file input ("pt")
    parent: str = ""  # field kind: the Processing name of its layer parameter
    decimals: int = 0  # float kind: digits shown in the dialog (0: 2)
    step: float = 0.0  # float kind: the dialog's spin step (0: Qt's default for the decimals)
    unset: int | None = None  # optional int in the dialog: the spin value meaning None (0 or -1)
    special: str = ""  # the dialog's text for its lowest value ("auto", "off", "from model")
    placeholder: str = ""  # json/string: example shown in an empty line edit

    def __post_init__(self) -> None:
        if self.kind and self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class Spec:
    """One field of a step's dataclass with its metadata resolved (kind, flag, default)."""

    field: str  # the dataclass field name
    meta: P
    kind: str
    flag: str
    default: Any  # dataclasses.MISSING when required
    required: bool

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.meta.choices)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for _, label in self.meta.choices)

    @property
    def label(self) -> str:
        return self.meta.short or self.meta.label

    @property
    def is_output(self) -> bool:
        return self.kind in OUTPUT_KINDS

    @property
    def optional(self) -> bool:
        return self.meta.optional or (not self.required and self.default is None)


_TYPE_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "string", "dict": "json"}


def _kind(f: dataclasses.Field, meta: P) -> str:
    if meta.kind:
        return meta.kind
    if meta.choices:
        return "enum"
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = annotation.replace(" | None", "").replace("None | ", "").strip()
    if base not in _TYPE_KINDS:
        raise ValueError(f"{f.name}: give P(kind=...) for type {f.type}")
    return _TYPE_KINDS[base]


def _flag(name: str, meta: P) -> str:
    if meta.cli:
        return meta.cli
    return "--" + name.removesuffix("_path").replace("_", "-")


def schema(cls: type) -> list[Spec]:
    """The front-end parameters of a step's dataclass, in field order (fields without P are skipped)."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("geoseg")
        if meta is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append(Spec(f.name, meta, _kind(f, meta), _flag(f.name, meta), default, default is dataclasses.MISSING))
    return out


def spec(cls: type, field_name: str) -> Spec:
    """The Spec of one field (KeyError when it has no metadata)."""
    for s in schema(cls):
        if s.field == field_name:
            return s
    raise KeyError(field_name)


def by_name(cls: type, name: str) -> Spec:
    """The Spec whose Processing name is `name`."""
    for s in schema(cls):
        if s.name == name:
            return s
    raise KeyError(name)


def p(default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """`dataclasses.field` carrying a P: `epochs: int = p(20, name="EPOCHS", label="Epochs", minimum=1)`."""
    kw: dict[str, Any] = {"metadata": {"geoseg": P(**meta)}}
    if isinstance(default, dict | list):
        kw["default_factory"] = lambda: type(default)(default)
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return field(**kw)


def parse_json_object(text: str | None, name: str, example: str = "") -> dict:
    """A JSON-object parameter as typed by a user: empty → {}, otherwise a JSON object.

    GeoSegError (with `param=name`) says what is wrong, never a traceback."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise GeoSegError(f"{name} is not valid JSON ({e}).", param=name) from None
    if not isinstance(value, dict):
        raise GeoSegError(f"{name} must be a JSON object" + (f", e.g. {example}." if example else "."), param=name)
    return value


def parse_model_options(text: str | None) -> dict:
    """MODEL_OPTIONS as typed by a user: empty, or a JSON object (checked against the
    architecture later, by core.train.validate)."""
    return parse_json_object(text, "MODEL_OPTIONS", '{"base_width": 16}')


# ----------------------------------------------------------------------------- exportchips
@dataclass(frozen=True)
class ExportParams:
    """Everything chip export needs; built by the dialog, the algorithm and the CLI alike."""

    input_path: str = p(
        name="INPUT",
        label="Input raster",
        kind="raster",
        help="Raster to cut into image chips (a GDAL file layer, e.g. a GeoTIFF).",
    )
    labels_path: str | None = p(
        None,
        name="LABELS",
        label="Label polygons",
        kind="vector",
        help="Polygons burnt into the mask chips; reprojected to the raster CRS "
        "(a file; optionally 'file.gpkg|layername=x'). Give LABELS or LABEL_RASTER, not both.",
    )
    output_dir: str = p(  # "" only so that LABELS may come before it without a value; required by validate
        "",
        name="OUTPUT_DIR",
        label="Output folder",
        kind="folder_out",
        help="New or empty folder for images/, masks/, chips.csv and dataset.json; "
        "GeoSeg never overwrites. With APPEND: an existing GeoSeg chips folder.",
    )
    label_raster: str | None = p(
        None,
        name="LABEL_RASTER",
        label="Label raster (classified, instead of polygons)",
        short="Label raster",
        kind="raster",
        help="Single-band integer raster of class values 0-254, any CRS and pixel size, read on the "
        "input's grid (nearest neighbour); its nodata and everything outside it become 255 (ignored). "
        "Give LABELS or LABEL_RASTER, not both.",
    )
    mask_path: str | None = p(
        None,
        name="MASK",
        label="Area of interest (polygons)",
        short="Area of interest",
        kind="vector",
        help="Polygons, any CRS: mask pixels outside them become 255 (ignored) and chips wholly outside "
        "them are not written.",
    )
    append: bool = p(
        False,
        name="APPEND",
        label="Add to an existing chips folder",
        help="Add this raster's chips to the GeoSeg chips folder OUTPUT_DIR (another scene of the same "
        "bands, data type and classes; any CRS): statistics, class counts and the split are updated.",
    )
    class_field: str | None = p(
        None,
        name="CLASS_FIELD",
        label="Class field (integer; empty: every polygon is " "class 1)",
        short="Class field",
        kind="field",
        parent="LABELS",
        help="Integer field with the class value (0-254) of each polygon; empty: every " "polygon is class 1.",
    )
    name_field: str | None = p(
        None,
        name="NAME_FIELD",
        label="Class name field",
        kind="field",
        parent="LABELS",
        advanced=True,
        help="Optional text field naming each class, written to dataset.json.",
    )
    chip_size: int = p(
        256,
        name="CHIP_SIZE",
        label="Chip size (pixels)",
        minimum=8,
        help="Width and height of each chip in raster pixels.",
    )
    stride_x: int | None = p(
        None,
        name="STRIDE_X",
        label="Stride X (pixels; default: chip size)",
        short="Stride X (pixels)",
        minimum=1,
        unset=0,
        special="= chip size",
        help="Horizontal step between chip origins; smaller than the chip size gives " "overlapping chips.",
    )
    stride_y: int | None = p(
        None,
        name="STRIDE_Y",
        label="Stride Y (pixels; default: chip size)",
        short="Stride Y (pixels)",
        minimum=1,
        unset=0,
        special="= chip size",
        help="Vertical step between chip origins; smaller than the chip size gives " "overlapping chips.",
    )
    mode: str = p(
        "all",
        name="MODE",
        label="Mode",
        choices=MODE_CHOICES,
        help="All: keep every chip. Positive: only chips holding a label. Divided: write positive/ and "
        "background/ sub-folders.",
    )
    background: int = p(
        0,
        name="BACKGROUND",
        label="Background value (outside polygons)",
        short="Background value",
        minimum=0,
        maximum=254,
        help="Mask value outside the polygons (255 marks ignored pixels).",
    )
    max_nodata_fraction: float = p(
        1.0,
        name="MAX_NODATA_FRACTION",
        label="Maximum nodata fraction of a chip",
        short="Maximum nodata fraction",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
        decimals=2,
        step=0.05,
        help="Chips with a larger share of nodata pixels are skipped.",
    )
    validation_fraction: float = p(
        0.2,
        name="VALIDATION_FRACTION",
        label="Validation fraction",
        minimum=0.0,
        maximum=0.99,
        decimals=2,
        step=0.05,
        help="Share of the exported chips marked 'validation' in chips.csv.",
    )
    split_method: str = p(
        "random",
        name="SPLIT_METHOD",
        label="Split method",
        choices=SPLIT_METHOD_CHOICES,
        advanced=True,
        help="Random: chips drawn at random. Spatial blocks: whole square blocks go "
        "to validation, keeping neighbouring chips on one side. Per scene: whole scenes (rasters added "
        "with APPEND) go to validation.",
    )
    block_size: int | None = p(
        None,
        name="BLOCK_SIZE",
        label="Spatial block size (pixels; default: 4 chips)",
        short="Block size (pixels)",
        minimum=1,
        unset=0,
        special="default (4 chips)",
        advanced=True,
        help="Side of the spatial blocks in pixels; default: four chips.",
    )
    seed: int = p(
        0,
        name="SEED",
        label="Random seed",
        minimum=0,
        maximum=2147483647,
        advanced=True,
        help="The same seed gives the same split.",
    )
    index_path: str | None = p(
        None,
        name="INDEX",
        label="Chip index (footprints)",
        kind="vector_out",
        file_filter="GeoPackage (*.gpkg)",
        help="Write the chip footprints (with their split) to this GeoPackage.",
    )
    chip_format: str = p(
        "geotiff",
        name="CHIP_FORMAT",
        label="Chip format",
        choices=CHIP_FORMAT_CHOICES,
        advanced=True,
        help="GeoTIFF: georeferenced chips (default). PNG: image/mask .png pairs with world files, for tools "
        "that expect plain images (8-bit data of 1-4 bands only). GeoTIFF + Segmentation Zoo .npz: the "
        "GeoTIFF chips plus npz/<chip>.npz holding arr_0 (image, height x width x bands) and arr_1 "
        "(label, height x width). Train reads GeoTIFF and PNG chips.",
    )


# ----------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainParams:
    """Everything training needs; built by the dialog, the algorithm and the CLI alike."""

    chips_dir: str = p(
        name="CHIPS",
        label="Chips folder (from Export training chips)",
        short="Chips folder",
        kind="folder",
        cli="--chips",
        help="Folder written by Export training chips (chips.csv, dataset.json, images/, masks/).",
    )
    output_model: str = p(
        name="OUTPUT_MODEL",
        label="Output model (.pt)",
        kind="file_out",
        file_filter="PyTorch checkpoint (*.pt)",
        help="Best checkpoint (.pt); the .onnx model, .metrics.csv and .last.pt (resumable state) "
        "are written beside it. GeoSeg never overwrites.",
    )
    architecture: str = p(
        "unet",
        name="ARCHITECTURE",
        label="Architecture",
        choices=ARCHITECTURE_CHOICES,
        help="Network to train: UNet, UNet++, DeepLabv3+ or FCN.",
    )
    encoder: str = p(
        "default",
        name="ENCODER",
        label="Encoder (UNet, UNet++, DeepLabv3+)",
        short="Encoder",
        choices=ENCODER_CHOICES,
        help="A ResNet encoder for UNet or UNet++ (skips from its stages, as segmentation-models-pytorch's) "
        "or DeepLabv3+; the default keeps the plain UNet, and DeepLabv3+'s MODEL_OPTIONS encoder.",
    )
    encoder_weights: str | None = p(
        None,
        name="ENCODER_WEIGHTS",
        optional=True,
        label="Pretrained encoder weights (name or .pth file; empty = random)",
        short="Encoder weights",
        placeholder="resnet34_imagenet, resnet50_sentinel2_all_moco, … or a .pth file",
        help="Empty: random initialisation. A name from README 'Start from pretrained weights' "
        "(downloaded once into the cache, sha256-checked) or a local torchvision/timm ResNet .pth file.",
    )
    epochs: int = p(
        20, name="EPOCHS", label="Epochs", minimum=1, help="Passes over the training chips; validation runs after each."
    )
    batch_size: int = p(
        8,
        name="BATCH_SIZE",
        label="Batch size",
        minimum=1,
        help="Chips per optimisation step; lower it when memory runs out.",
    )
    learning_rate: float = p(
        1e-3,
        name="LEARNING_RATE",
        label="Learning rate (maximum of the schedule)",
        short="Learning rate",
        minimum=1e-7,
        maximum=0.99,
        decimals=7,
        step=0.0005,
        help="Maximum learning rate of the schedule (AdamW).",
    )
    loss: str = p(
        "dice_ce",
        name="LOSS",
        label="Loss",
        choices=LOSS_CHOICES,
        help="Training loss; Dice + cross-entropy suits most datasets, focal/Tversky help with rare classes.",
    )
    class_weights: str = p(
        "none",
        name="CLASS_WEIGHTS",
        label="Class weights",
        choices=CLASS_WEIGHT_CHOICES,
        advanced=True,
        help="Inverse class frequency weighs rare classes up in the loss.",
    )
    ignore_background: bool = p(
        False,
        name="IGNORE_BACKGROUND",
        label="Ignore the background class (incomplete " "labels: learn only the labelled classes)",
        short="Ignore the background class",
        advanced=True,
        help="For incomplete labels: learn only the labelled classes.",
    )
    device: str = p(
        "auto",
        name="DEVICE",
        label="Device",
        choices=DEVICE_CHOICES,
        help="Where to train: Auto uses the CUDA GPU when torch sees one, else the CPU.",
    )
    seed: int = p(
        0,
        name="SEED",
        label="Random seed",
        minimum=0,
        maximum=2147483647,
        help="The same seed and data give the same initial weights, batches and augmentation.",
    )
    schedule: str = p(
        "onecycle",
        name="SCHEDULE",
        label="Learning-rate schedule",
        choices=SCHEDULE_CHOICES,
        advanced=True,
        help="One-cycle: warm up then anneal. Cosine: anneal from the start.",
    )
    weight_decay: float = p(
        1e-4,
        name="WEIGHT_DECAY",
        label="Weight decay (AdamW)",
        minimum=0.0,
        advanced=True,
        decimals=6,
        step=0.0001,
        help="L2 penalty of AdamW on the weights.",
    )
    patience: int = p(
        0,
        name="PATIENCE",
        label="Early stopping patience (epochs; 0 = off)",
        short="Early stopping patience",
        minimum=0,
        special="off",
        advanced=True,
        help="Stop after this many epochs without a better validation mIoU; 0 = off.",
    )
    augment: bool = p(
        True,
        name="AUGMENT",
        label="Augment (flips, rotations, brightness, contrast, gamma)",
        advanced=True,
        help="Random flips, 90° rotations and photometric changes per training batch.",
    )
    resume: bool = p(
        False,
        name="RESUME",
        label="Resume the interrupted run of OUTPUT_MODEL",
        short="Resume the interrupted run of the output model",
        advanced=True,
        help="Continue from the .last.pt state beside the output model (same chips).",
    )
    num_workers: int | None = None  # engine-only; None: chosen from the CPU count
    memory_budget_mb: float = p(
        0.0,
        name="MEMORY_BUDGET",
        label="Memory budget of a training step (MB; 0 = none): " "halve the batch when over it",
        short="Memory budget (MB)",
        minimum=0.0,
        decimals=0,
        step=256,
        special="none",
        advanced=True,
        help="Halve the batch when a training step would need more memory; 0: " "$GEOSEG_MEMORY_BUDGET_MB or none.",
    )
    freeze_encoder_epochs: int = p(
        0,
        name="FREEZE_ENCODER_EPOCHS",
        label="Freeze the pretrained encoder for the first epochs (0 = never)",
        short="Freeze encoder epochs",
        minimum=0,
        special="never",
        advanced=True,
        help="Train only the decoder for this many epochs, then the whole network; needs ENCODER_WEIGHTS.",
    )
    weights_cache: str | None = None  # engine-only: the folder for downloaded weights (the dialog: QGIS profile)
    model_options: dict = p(
        {},
        name="MODEL_OPTIONS",
        label='Architecture options as JSON, e.g. {"base_width": 16, ' '"depth": 3}',
        short="Model options (JSON)",
        optional=True,
        advanced=True,
        placeholder='{"base_width": 16}',
        help='Architecture options as a JSON object, e.g. {"base_width": 16, "depth": 3}.',
    )


# ----------------------------------------------------------------------------- segment
@dataclass(frozen=True)
class SegmentParams:
    """Everything segmentation needs; built by the dialog, the algorithm and the CLI alike."""

    input_path: str = p(
        name="INPUT",
        label="Input raster",
        kind="raster",
        help="Raster to segment (a GDAL file layer); it needs the bands the model was trained on.",
    )
    model_path: str = p(
        name="MODEL",
        label="Model (.onnx or .pt)",
        short="Model",
        kind="file",
        file_filter="GeoSeg models (*.onnx *.pt)",
        help="GeoSeg model: the .onnx or .pt written by Train model (its card travels inside).",
    )
    output_path: str = p(
        name="OUTPUT",
        label="Class map",
        short="Class raster (.tif)",
        kind="raster_out",
        file_filter="GeoTIFF (*.tif)",
        help="GeoTIFF to write: Byte, one class value per pixel, 255 = nodata, colour table. "
        "GeoSeg never overwrites.",
    )
    probabilities_path: str | None = p(
        None,
        name="OUTPUT_PROBABILITIES",
        label="Class probabilities",
        short="Probabilities (.tif, optional)",
        kind="raster_out",
        file_filter="GeoTIFF (*.tif)",
        help="Optional Float32 GeoTIFF with one softmax probability band per class; " "empty: not written.",
    )
    card_path: str | None = p(
        None,
        name="CARD",
        label="Model card (JSON) for a model without one",
        short="Model card (JSON)",
        kind="file",
        cli="--card",
        file_filter="JSON (*.json)",
        help="A JSON file with the card fields (classes, bands, in_channels, chip_size, normalization) for an "
        "ONNX model that carries neither a GeoSeg card nor Deepness metadata; it replaces the model's own.",
    )
    extent: str | None = p(
        None,
        name="EXTENT",
        label="Area to segment (default: the whole raster)",
        short="Area to segment",
        kind="extent",
        placeholder="xmin,xmax,ymin,ymax [EPSG:xxxx]",
        help="Only this window of INPUT is read and segmented: 'xmin,xmax,ymin,ymax' in the raster's CRS, or "
        "followed by ' [EPSG:xxxx]' in another CRS; snapped outwards to the raster's pixels. Empty: the whole "
        "raster (a web layer in the dialog: the map canvas's extent).",
    )
    output_index: int = p(
        0,
        name="OUTPUT_INDEX",
        label="Model output to use (0: the first)",
        short="Model output",
        minimum=0,
        advanced=True,
        help="For an ONNX model with several outputs: which one holds the segmentation (0 = the first).",
    )
    model_threshold: bool = p(
        False,
        name="MODEL_THRESHOLD",
        label="Apply the model's probability threshold (Deepness seg_thresh)",
        short="Apply the model's threshold",
        advanced=True,
        help="Deepness models: a pixel whose highest probability is below the model's seg_thresh becomes "
        "class 0 (sigmoid models: 1 where p ≥ seg_thresh). Off: arg-max, and p ≥ 0.5 for a sigmoid.",
    )
    chip_size: int | None = p(
        None,
        name="CHIP_SIZE",
        label="Chip size (pixels; default: chosen for the model)",
        short="Chip size (pixels)",
        minimum=8,
        unset=0,
        special="automatic",
        help="Width and height of the tiles fed to the model. Default: for a local model (a measured receptive "
        "radius r and no global context, from its card or a probe of the model) the largest multiple of the "
        "model's stride factor that fits the memory budget with the batch, at most 512 on the CPU and 2048 on a "
        "GPU and no larger than the raster; for a model with global context (image pooling, a fixed input size) "
        "its trained chip size.",
    )
    stride_x: int | None = p(
        None,
        name="STRIDE_X",
        label="Stride X (pixels; default: chosen for the model)",
        short="Stride X (pixels)",
        minimum=1,
        unset=0,
        special="automatic",
        help="Horizontal step between tiles. Default: CHIP_SIZE − 2·CROP for a local model (each pixel computed "
        "about once), else half the chip (each pixel computed about 4 times).",
    )
    stride_y: int | None = p(
        None,
        name="STRIDE_Y",
        label="Stride Y (pixels; default: chosen for the model)",
        short="Stride Y (pixels)",
        minimum=1,
        unset=0,
        special="automatic",
        help="Vertical step between tiles. Default: CHIP_SIZE − 2·CROP for a local model (each pixel computed "
        "about once), else half the chip (each pixel computed about 4 times).",
    )
    crop: int | None = p(
        None,
        name="CROP",
        label="Crop at interior tile edges (pixels; default: chosen for the model)",
        short="Crop (pixels)",
        minimum=0,
        unset=-1,
        special="automatic",
        help="Margin of each tile's prediction that is discarded (tile edges see less context); a crop of at "
        "least the model's receptive radius gives the same map as whole-image inference. Default: max(r, 16) "
        "for a local model of receptive radius r, else an eighth of the chip.",
    )
    batch_size: int = p(
        8,
        name="BATCH_SIZE",
        label="Batch size (0: automatic, within the memory budget)",
        short="Batch size",
        minimum=0,
        special="auto",
        help="Tiles per inference step; auto (0) picks the most that fit the memory. An "
        "out-of-memory error halves it and retries.",
    )
    resolution: str = p(
        "auto",
        name="RESOLUTION",
        label="Resolution the model reads",
        short="Read the raster at",
        choices=RESOLUTION_CHOICES,
        help="Auto: the model card's pixel size and CRS (a degree raster without a card CRS: its UTM zone); "
        "the raster's own grid; or PIXEL_SIZE. Tiles are read through a GDAL warped VRT when the grid differs.",
    )
    pixel_size: float = p(
        0.0,
        name="PIXEL_SIZE",
        label="Pixel size for RESOLUTION 2 (map units of the working CRS)",
        short="Pixel size",
        minimum=0.0,
        decimals=3,
        special="none",
        help="The pixel size to read the raster at when RESOLUTION is 2 (PIXEL_SIZE), in map units of the "
        "working CRS (the card's, else the raster's, or its UTM zone for a degree raster).",
    )
    output_grid: str = p(
        "input",
        name="OUTPUT_GRID",
        label="Grid of the class map",
        short="Write the class map on",
        choices=OUTPUT_GRID_CHOICES,
        help="The input raster's grid (nearest neighbour back from the working grid, streamed) or the "
        "working grid the model read.",
    )
    resampling: str = p(
        "bilinear",
        name="RESAMPLING",
        label="Resampling of the imagery",
        short="Resampling",
        choices=RESAMPLING_CHOICES,
        advanced=True,
        help="How the raster's pixels are resampled onto the working grid (only when it differs).",
    )
    backend: str = p(
        "auto",
        name="BACKEND",
        label="Backend",
        choices=BACKEND_CHOICES,
        advanced=True,
        help="Inference engine: Auto prefers onnxruntime for .onnx models and torch for .pt.",
    )
    device: str = p(
        "auto",
        name="DEVICE",
        label="Device",
        choices=DEVICE_CHOICES,
        advanced=True,
        help="Where to run: Auto uses a CUDA GPU when the backend sees one, else the CPU.",
    )
    memory_budget_mb: float = p(
        0.0,
        name="MEMORY_BUDGET",
        label="Memory budget of one inference batch (MB; 0 = " "none): halve the batch when over it",
        short="Memory budget (MB)",
        minimum=0.0,
        decimals=0,
        step=256,
        special="none",
        advanced=True,
        help="Memory one inference batch may take; 0: $GEOSEG_MEMORY_BUDGET_MB, else none.",
    )
    # issue 17 (polygons, cleaning, test-time augmentation)
    sieve: int = p(
        0,
        name="SIEVE",
        label="Merge regions smaller than this into their largest neighbour (pixels; 0 = off)",
        short="Remove regions below (pixels)",
        minimum=0,
        special="off",
        help="GDAL's sieve filter on the class map (4-connected regions, nodata left alone): every region of "
        "fewer pixels joins its largest neighbour, in the class map and therefore in OUTPUT_VECTOR.",
    )
    tta: str = p(
        "none",
        name="TTA",
        label="Test-time augmentation",
        choices=TTA_CHOICES,
        help="Average the softmax probabilities of each tile's flipped (4 views) or flipped and turned "
        "(8 views) copies, each undone, before the arg-max; costs about one model run per view.",
    )
    vector_path: str | None = p(
        None,
        name="OUTPUT_VECTOR",
        label="Class polygons",
        short="Polygons (.gpkg, optional)",
        kind="vector_out",
        file_filter="GeoPackage (*.gpkg)",
        help="Optional GeoPackage: one polygon per connected region of the class map (after SIEVE) with its "
        "class value, class name and area (m² in a projected CRS); empty: not written. GeoSeg never overwrites.",
    )
    # issue 19 (prediction on a Dask cluster: core.distributed)
    scheduler: str | None = p(
        None,
        name="SCHEDULER",
        optional=True,
        label="Dask scheduler (address or scheduler file; empty = this process)",
        short="Dask scheduler",
        placeholder="tcp://host:8786 or /shared/scheduler.json",
        advanced=True,
        help="Predict the tiles on the workers of a running Dask cluster (`python -m geoseg.core cluster`, or "
        "`dask scheduler` + `dask worker`): its tcp://host:port address, or the JSON file written by "
        "`dask scheduler --scheduler-file`. The workers must see INPUT, MODEL and the output folder at the "
        "same paths (shared storage). Empty: $DASK_SCHEDULER_ADDRESS if set, else this process.",
    )


# ----------------------------------------------------------------------------- assess
@dataclass(frozen=True)
class AssessParams:
    """Built by the dialog, the algorithm and the CLI alike."""

    prediction_path: str = p(
        name="PREDICTION",
        label="Class map (prediction)",
        kind="raster",
        help="Single-band integer class raster to assess (a GDAL file layer, e.g. the GeoTIFF "
        "written by Segment raster).",
    )
    report_path: str = p(
        name="OUTPUT_REPORT",
        label="Report (.html or .json; both are written)",
        short="Report (.html or .json)",
        kind="file_out",
        file_filter="HTML (*.html);;JSON (*.json)",
        help="Report to write: the .json and the .html are both written, beside each other. "
        "GeoSeg never overwrites.",
    )
    reference_path: str | None = p(
        None,
        name="REFERENCE",
        label="Reference raster (same grid)",
        short="Reference",
        kind="raster",
        help="The truth: a class raster on the prediction's grid (same " "size, pixel size, origin and CRS).",
    )
    reference_vector: str | None = p(
        None,
        name="REFERENCE_VECTOR",
        label="Reference polygons",
        kind="vector",
        help="The truth as polygons with an integer class field (pixels outside " "every polygon are not counted).",
    )
    class_field: str | None = p(
        None,
        name="CLASS_FIELD",
        label="Class field of the reference polygons",
        short="Class field",
        kind="field",
        parent="REFERENCE_VECTOR",
        help="Integer field of the reference polygons holding each polygon's class value.",
    )


# ----------------------------------------------------------------------------- exportonnx
@dataclass(frozen=True)
class ExportOnnxParams:
    """A GeoSeg checkpoint to convert into an ONNX model carrying the same card."""

    model_path: str = p(
        name="MODEL",
        label="GeoSeg checkpoint (.pt)",
        kind="file",
        extension="pt",
        file_filter="PyTorch checkpoint (*.pt)",
        help="Checkpoint written by Train model.",
    )
    output_path: str = p(
        name="OUTPUT",
        label="ONNX model",
        kind="file_out",
        file_filter="ONNX model (*.onnx)",
        help="ONNX model to write. GeoSeg never overwrites.",
    )
    format: str = p(
        "geoseg",
        name="FORMAT",
        label="Format",
        choices=ONNX_FORMAT_CHOICES,
        help="GeoSeg: dynamic batch, height and width, logits. Deepness: fixed chip size, dynamic batch, "
        "probabilities (softmax; sigmoid for two classes) and Deepness's metadata keys. Both carry the "
        "GeoSeg card.",
    )


STEPS = {
    "exportchips": ExportParams,
    "train": TrainParams,
    "segment": SegmentParams,
    "assess": AssessParams,
    "exportonnx": ExportOnnxParams,
}
