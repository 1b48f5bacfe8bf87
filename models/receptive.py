"""Empirical receptive field of a segmentation network, for choosing the tiling CROP.

Tiled prediction equals whole-image prediction only when every kept pixel's receptive field
lies inside its tile, so `segment` needs a crop at least as large as this radius. The
gradient of one output pixel with respect to the input is non-zero exactly where that pixel
can "see"; measuring it beats summing kernel sizes by hand, which misses padding, dilation,
pooling alignment and global branches.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Activations whose zero-gradient regions could hide part of the field for a given input.
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardtanh, nn.Sigmoid, nn.Tanh)


def _linearise(module: nn.Module) -> None:
    """Activation → Identity, MaxPool → AvgPool (same window) in place, so every path that some
    input could open carries gradient: the measured field is the largest over all inputs."""
    for name, child in module.named_children():
        if isinstance(child, _ACTIVATIONS):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.MaxPool2d) and child.dilation in (1, (1, 1)):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
        else:
            _linearise(child)


def receptive_field_radius(model: nn.Module, in_channels: int, size: int = 256, samples: int = 1) -> int:
    """Largest Chebyshev distance (pixels) from the centre at which the input affects the centre logits.

    Works on a float64 copy of `model` in eval mode — the model itself, its train/eval mode
    and dtype are left untouched — with activation modules replaced by identities and max-pools
    by average pools, so the result is the field any input could use (not the part one input's
    live ReLUs and pool winners happen to use); functional activations inside `forward` stay, so
    the input is seeded random normal (`samples` of them, union taken), never zeros. Float64
    keeps edge gradients far from underflow, so "non-zero" is an exact test. The sum of all class
    logits at the centre pixel of a size×size input is back-propagated.

    The result is capped at size // 2: a model with global context (DeepLabv3+'s image pooling)
    or a field wider than the probe returns the cap; probe with a larger `size` to tell. The model
    card records a radius at the cap as `recommended.global_context` (core.card.recommended_tiling),
    and segment then keeps the trained chip size (core.tiling).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    probe = copy.deepcopy(model).to(dtype=torch.float64).eval()
    _linearise(probe)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, in_channels, size, size, generator=generator, dtype=torch.float64).to(device)
    x.requires_grad_(True)
    out = probe(x)
    if isinstance(out, list | tuple):  # deep supervision in eval mode already yields one tensor
        out = out[-1]
    cy, cx = size // 2, size // 2
    out[:, :, cy, cx].sum().backward()
    if x.grad is None:
        return 0
    hit = (x.grad != 0).any(dim=0).any(dim=0)  # [size, size]
    ys, xs = torch.nonzero(hit, as_tuple=True)
    if ys.numel() == 0:
        return 0
    radius = int(torch.maximum((ys - cy).abs().max(), (xs - cx).abs().max()).item())
    return min(radius, size // 2)
