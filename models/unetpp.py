"""UNet++ (Zhou et al. 2018): U-Net with nested, densely connected skip pathways.

Node X[i][j] (level i, column j) sees every earlier node of its level, X[i][0..j-1], and the
bilinearly upsampled X[i+1][j-1], through two 3×3 conv-(BN)-ReLU layers of width
`base_width · 2^i`. The nested pathways narrow the semantic gap between encoder and decoder
features, which helps on small, thin objects (roads, field edges) at a moderate CPU cost.

Deep supervision: a 1×1 head on each X[0][j], j = 1..depth. In training mode `forward`
returns the list of those logits (shallowest first; average the loss over them). In eval
mode it returns only the LAST (deepest, X[0][depth]) head, a single tensor, so ONNX export,
validation and prediction see the same output as without deep supervision. The shallower
heads only shape the training signal; the deepest one is the most accurate and the one the
other heads' parameters feed anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import DoubleConv, crop_to, init_classifier, init_weights, pad_to_multiple, resize_to


class UNetPlusPlus(nn.Module):
    """Nested U-Net; see the module docstring for the deep-supervision output rule."""

    architecture = "unetpp"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 4,
        base_width: int = 32,
        batch_norm: bool = True,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.options = {
            "depth": depth,
            "base_width": base_width,
            "batch_norm": batch_norm,
            "deep_supervision": deep_supervision,
        }
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.stride = 2**depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        # nodes[f"{i}_{j}"] is X[i][j]; column 0 is the encoder.
        self.nodes = nn.ModuleDict()
        for i in range(depth + 1):
            self.nodes[f"{i}_0"] = DoubleConv(in_channels if i == 0 else widths[i - 1], widths[i], batch_norm)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.nodes[f"{i}_{j}"] = DoubleConv(j * widths[i] + widths[i + 1], widths[i], batch_norm)
        n_heads = depth if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes, kernel_size=1) for _ in range(n_heads))
        init_weights(self)
        init_classifier(*self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """[N, C, H, W] → logits [N, K, H, W]; a list of `depth` of them when deep-supervised and training."""
        h = pad_to_multiple(x, self.stride)
        grid: list[list[torch.Tensor]] = [[] for _ in range(self.depth + 1)]
        for i in range(self.depth + 1):
            h = self.nodes[f"{i}_0"](h if i == 0 else self.pool(h))
            grid[i].append(h)
            # the new encoder node completes the anti-diagonal X[i-j][j], j = 1..i
            for j in range(1, i + 1):
                level = i - j
                up = resize_to(grid[level + 1][j - 1], grid[level][0])
                grid[level].append(self.nodes[f"{level}_{j}"](torch.cat([*grid[level], up], dim=1)))
        top = grid[0][1:]
        if self.deep_supervision and self.training:
            return [crop_to(head(t), x) for head, t in zip(self.heads, top, strict=True)]
        return crop_to(self.heads[-1](top[-1]), x)
