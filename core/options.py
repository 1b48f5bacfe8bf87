"""Choices shared by the front-ends, defined once as (value, label) pairs, without importing torch
(the plugin must load without it).

The order of each tuple is the Processing enum index of the public contract. The value tuples
(LOSSES, DEVICES, ...) and label tuples are derived from the pairs; architecture names belong to
the model registry (models/names.py) and are re-exported here.
"""

from ..models.names import ARCHITECTURE_LABELS, ARCHITECTURES

ARCHITECTURE_CHOICES = tuple(zip(ARCHITECTURES, ARCHITECTURE_LABELS, strict=True))
LOSS_CHOICES = (
    ("ce", "Cross-entropy"),
    ("dice", "Dice"),
    ("dice_ce", "Dice + cross-entropy"),
    ("focal", "Focal"),
    ("tversky", "Tversky"),
    ("unified_focal", "Unified focal"),
)
DEVICE_CHOICES = (("auto", "Auto (GPU when available)"), ("cpu", "CPU"), ("cuda", "CUDA GPU"))
BACKEND_CHOICES = (("auto", "Auto"), ("onnxruntime", "onnxruntime"), ("torch", "torch"))
CLASS_WEIGHT_CHOICES = (("none", "None"), ("inverse_frequency", "Inverse class frequency"))
SCHEDULE_CHOICES = (("onecycle", "One-cycle"), ("cosine", "Cosine"))
ENCODER_CHOICES = (  # ResNet encoders (models.registry.RESNET_ENCODERS); "default": the architecture's own
    ("default", "Architecture default (plain UNet; ResNet-18 for DeepLabv3+)"),
    ("resnet18", "ResNet-18"),
    ("resnet34", "ResNet-34"),
    ("resnet50", "ResNet-50"),
)
MODE_CHOICES = (("all", "All"), ("positive", "Positive"), ("divided", "Divided"))  # core.chips.MODES
SPLIT_METHOD_CHOICES = (
    ("random", "Random"),
    ("blocks", "Spatial blocks"),
    ("scenes", "Per scene (whole scenes)"),
)  # core.split.SPLIT_METHODS


CHIP_FORMAT_CHOICES = (
    ("geotiff", "GeoTIFF"),
    ("png", "PNG (8-bit, 1-4 bands; with world files)"),
    ("npz", "GeoTIFF + Segmentation Zoo .npz"),
)  # core.chips.CHIP_FORMATS

ONNX_FORMAT_CHOICES = (
    ("geoseg", "GeoSeg (dynamic size, logits)"),
    ("deepness", "Deepness (fixed chip size, probabilities)"),
)  # core.foreign.deepness_metadata


RESOLUTION_CHOICES = (
    ("auto", "Auto: the model card's pixel size and CRS"),
    ("raster", "The raster's own"),
    ("size", "PIXEL_SIZE (map units of the working CRS)"),
)  # core.resample.plan_grid
OUTPUT_GRID_CHOICES = (
    ("input", "The input raster's grid"),
    ("working", "The working grid (the model's resolution)"),
)
RESAMPLING_CHOICES = (
    ("bilinear", "Bilinear"),
    ("cubic", "Cubic"),
    ("average", "Average"),
    ("nearest", "Nearest neighbour"),
)  # GDAL resampling names: core.resample.GDAL_RESAMPLING
TTA_CHOICES = (
    ("none", "None"),
    ("flips", "Flips (4 views)"),
    ("all", "Flips and quarter turns (8 views)"),
)  # core.tta.VIEWS


def values(choices: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(v for v, _ in choices)


def labels(choices: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(label for _, label in choices)


LOSSES, LOSS_LABELS = values(LOSS_CHOICES), labels(LOSS_CHOICES)
DEVICES, DEVICE_LABELS = values(DEVICE_CHOICES), labels(DEVICE_CHOICES)
BACKENDS, BACKEND_LABELS = values(BACKEND_CHOICES), labels(BACKEND_CHOICES)
CLASS_WEIGHTS, CLASS_WEIGHT_LABELS = values(CLASS_WEIGHT_CHOICES), labels(CLASS_WEIGHT_CHOICES)
SCHEDULES, SCHEDULE_LABELS = values(SCHEDULE_CHOICES), labels(SCHEDULE_CHOICES)
MODE_LABELS, SPLIT_METHOD_LABELS = labels(MODE_CHOICES), labels(SPLIT_METHOD_CHOICES)
CHIP_FORMATS, CHIP_FORMAT_LABELS = values(CHIP_FORMAT_CHOICES), labels(CHIP_FORMAT_CHOICES)
ENCODERS, ENCODER_LABELS = values(ENCODER_CHOICES), labels(ENCODER_CHOICES)
IGNORE_INDEX = 255

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_CHOICES",
    "ARCHITECTURE_LABELS",
    "BACKENDS",
    "BACKEND_CHOICES",
    "BACKEND_LABELS",
    "CHIP_FORMATS",
    "CHIP_FORMAT_CHOICES",
    "CHIP_FORMAT_LABELS",
    "CLASS_WEIGHTS",
    "CLASS_WEIGHT_CHOICES",
    "CLASS_WEIGHT_LABELS",
    "DEVICES",
    "DEVICE_CHOICES",
    "DEVICE_LABELS",
    "ENCODERS",
    "ENCODER_CHOICES",
    "ENCODER_LABELS",
    "IGNORE_INDEX",
    "LOSSES",
    "LOSS_CHOICES",
    "LOSS_LABELS",
    "MODE_CHOICES",
    "MODE_LABELS",
    "ONNX_FORMAT_CHOICES",
    "OUTPUT_GRID_CHOICES",
    "RESAMPLING_CHOICES",
    "RESOLUTION_CHOICES",
    "SCHEDULES",
    "SCHEDULE_CHOICES",
    "SCHEDULE_LABELS",
    "SPLIT_METHOD_CHOICES",
    "SPLIT_METHOD_LABELS",
    "TTA_CHOICES",
    "labels",
    "values",
]
