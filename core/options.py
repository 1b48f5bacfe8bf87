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
MODE_CHOICES = (("all", "All"), ("positive", "Positive"), ("divided", "Divided"))  # core.chips.MODES
SPLIT_METHOD_CHOICES = (("random", "Random"), ("blocks", "Spatial blocks"))  # core.split.SPLIT_METHODS


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
IGNORE_INDEX = 255

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_CHOICES",
    "ARCHITECTURE_LABELS",
    "BACKENDS",
    "BACKEND_CHOICES",
    "BACKEND_LABELS",
    "CLASS_WEIGHTS",
    "CLASS_WEIGHT_CHOICES",
    "CLASS_WEIGHT_LABELS",
    "DEVICES",
    "DEVICE_CHOICES",
    "DEVICE_LABELS",
    "IGNORE_INDEX",
    "LOSSES",
    "LOSS_CHOICES",
    "LOSS_LABELS",
    "MODE_CHOICES",
    "MODE_LABELS",
    "SCHEDULES",
    "SCHEDULE_CHOICES",
    "SCHEDULE_LABELS",
    "SPLIT_METHOD_CHOICES",
    "SPLIT_METHOD_LABELS",
    "labels",
    "values",
]
