"""Build a network from an architecture name and JSON options (the model card's vocabulary).

Importing this module does not import torch: `default_options` and `validate_options` serve
the dialogs and parameter checks; torch and the architecture module load in `build_model`.
`build_model(name, c, k, **model.options)` rebuilds the same architecture (pass
`encoder_weights=None` when a checkpoint's state dict will be loaded over it anyway).
Architectures with a ResNet encoder (`has_resnet_encoder`) expose it as `model.encoder`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .names import ARCHITECTURES

if TYPE_CHECKING:
    from torch import nn

RESNET_ENCODERS = ("resnet18", "resnet34", "resnet50")


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"expected an integer in [{lo}, {hi if hi is not None else '∞'}], got {v!r}")
        return v

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _dropout(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
        raise ValueError(f"expected a probability in [0, 1), got {v!r}")
    return float(v)


def _choice(*allowed: Any) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v not in allowed or isinstance(v, bool):
            raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, got {v!r}")
        return v

    return check


def _path_or_none(v: Any) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ValueError(f"expected a file path or null, got {v!r}")
    return v


def _rates(v: Any) -> list[int]:
    if isinstance(v, str | bytes) or not hasattr(v, "__iter__"):
        raise ValueError(f"expected a list of positive integers, got {v!r}")
    rates = list(v)
    if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(f"expected a non-empty list of positive integers, got {v!r}")
    return rates


# name → (module, class, {option: (default, validator)}); defaults are what a user who sets nothing gets.
_SPECS: dict[str, tuple[str, str, dict[str, tuple[Any, Callable[[Any], Any]]]]] = {
    "unet": (
        "unet",
        "build_unet",
        {
            "depth": (4, _int(1, 6)),
            "base_width": (32, _int(1)),
            "batch_norm": (True, _bool),
            "dropout": (0.0, _dropout),
            "encoder": ("none", _choice("none", *RESNET_ENCODERS)),
            "encoder_weights": (None, _path_or_none),
            "norm": ("batch", _choice("batch", "group")),
        },
    ),
    "unetpp": (
        "unetpp",
        "build_unetpp",
        {
            "depth": (4, _int(1, 6)),
            "base_width": (32, _int(1)),
            "batch_norm": (True, _bool),
            "deep_supervision": (False, _bool),
            "encoder": ("none", _choice("none", *RESNET_ENCODERS)),
            "encoder_weights": (None, _path_or_none),
        },
    ),
    "deeplabv3plus": (
        "deeplab",
        "DeepLabV3Plus",
        {
            "encoder": ("resnet18", _choice(*RESNET_ENCODERS)),
            "encoder_weights": (None, _path_or_none),
            "output_stride": (16, _choice(8, 16)),
            "atrous_rates": ([6, 12, 18], _rates),
            "decoder_channels": (128, _int(1)),
        },
    ),
    "fcn": (
        "fcn",
        "FCN8s",
        {
            "base_width": (32, _int(1)),
            "batch_norm": (True, _bool),
        },
    ),
}


def _spec(name: str) -> tuple[str, str, dict[str, tuple[Any, Callable[[Any], Any]]]]:
    if name not in _SPECS:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return _SPECS[name]


def default_options(name: str) -> dict[str, Any]:
    """The options used when the user gives none (a fresh, JSON-serialisable dict)."""
    return {key: (list(d) if isinstance(d, list) else d) for key, (d, _) in _spec(name)[2].items()}


def validate_options(name: str, **options: Any) -> dict[str, Any]:
    """Defaults overlaid with `options`, each checked; ValueError names the bad key and the valid ones."""
    fields = _spec(name)[2]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; valid: {', '.join(fields)}")
    resolved = default_options(name)
    for key, value in options.items():
        try:
            resolved[key] = fields[key][1](value)
        except ValueError as exc:
            raise ValueError(f"{name} option {key}: {exc}") from None
    return resolved


def has_resnet_encoder(name: str, options: dict[str, Any]) -> bool:
    """Whether `name` with these (resolved) options is built on a ResNet encoder (`model.encoder`)."""
    return name == "deeplabv3plus" or (name in ("unet", "unetpp") and options.get("encoder", "none") != "none")


def build_model(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised network with `.architecture` and `.options` (resolved, JSON-ready)."""
    resolved = validate_options(name, **options)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}")
    module_name, class_name, _ = _SPECS[name]
    cls = getattr(importlib.import_module(f".{module_name}", __package__), class_name)
    model = cls(in_channels, num_classes, **resolved)
    model.architecture = name
    model.options = resolved
    model.in_channels = in_channels
    model.num_classes = num_classes
    return model
