"""Building blocks shared by the architectures.

Every network pads its input to a multiple of its total stride and crops the logits back, so
that any H, W works, every internal resize is an exact factor of two (the map of a tile equals
the same window of a whole-image map away from the edges when tile origins are multiples of
the stride), and the ONNX graph keeps symbolic height and width (no Python branches on sizes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm_layer(channels: int, norm: str = "batch") -> nn.Module:
    """BatchNorm, or GroupNorm (groups of the channels, at most 32): GroupNorm normalises each sample on
    its own, so a step gives the same result however the batch is split (several GPUs, small batches)."""
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 32), channels)
    return nn.BatchNorm2d(channels)


def conv_bn_relu(
    in_ch: int, out_ch: int, batch_norm: bool = True, kernel_size: int = 3, dilation: int = 1, norm: str = "batch"
) -> nn.Sequential:
    """Conv → (norm) → ReLU; the conv has no bias when a norm follows (the norm's shift replaces it).
    `batch_norm` switches normalisation on; `norm` says which ("batch" or "group")."""
    padding = dilation * (kernel_size // 2)
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(norm_layer(out_ch, norm))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Two 3×3 conv-(norm)-ReLU layers: the U-Net block."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = True, norm: str = "batch") -> None:
        super().__init__(
            conv_bn_relu(in_ch, out_ch, batch_norm, norm=norm), conv_bn_relu(out_ch, out_ch, batch_norm, norm=norm)
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right to a multiple of `multiple`; sizes stay symbolic under ONNX export."""
    h, w = x.shape[-2], x.shape[-1]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h))


def crop_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop `x` to the height and width of `ref` (undoes `pad_to_multiple`)."""
    return x[:, :, : ref.shape[-2], : ref.shape[-1]]


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of `x` to `ref`'s spatial size (an exact ×2^k after padding)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def init_weights(module: nn.Module) -> None:
    """He init for ReLU convs, unit BN: a fixed, documented start independent of torch defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_classifier(*convs: nn.Conv2d) -> None:
    """Small classifier weights: logits start near 0, so training starts from uniform class
    probabilities (loss ≈ ln K) rather than from confident random guesses."""
    for conv in convs:
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
