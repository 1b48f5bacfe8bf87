"""FCN-8s (Long et al. 2015) on a small VGG-like backbone, sized for CPU training.

Five stages of two 3×3 conv-(BN)-ReLU layers, each followed by 2×2 max-pool, widths
`base_width · 2^stage` capped at 8× (VGG's 64…512 pattern, scaled down); a 3×3 and a 1×1
conv stand in for VGG's fc6/fc7. 1×1 score layers read pool3 (1/8), pool4 (1/16) and the
final features (1/32); the coarse score is upsampled ×2 and added to pool4's, again ×2
and added to pool3's, then upsampled ×8 to the input: the "8s" skip fusion, which restores
the detail a stride-32 net loses. Upsampling is bilinear (fixed), as FCN's learned
deconvolutions start bilinear and change little; it also keeps the graph small.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import DoubleConv, conv_bn_relu, crop_to, init_classifier, init_weights, pad_to_multiple, resize_to

STAGES = 5


class FCN8s(nn.Module):
    """VGG-like encoder with pool3/pool4/final score fusion; logits have the input's H and W."""

    architecture = "fcn"

    def __init__(self, in_channels: int, num_classes: int, base_width: int = 32, batch_norm: bool = True) -> None:
        super().__init__()
        self.options = {"base_width": base_width, "batch_norm": batch_norm}
        self.stride = 2**STAGES
        widths = [base_width * min(2**i, 8) for i in range(STAGES)]
        self.stages = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.stages.append(DoubleConv(ch, w, batch_norm))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Sequential(conv_bn_relu(ch, ch, batch_norm), conv_bn_relu(ch, ch, batch_norm, kernel_size=1))
        self.score_pool3 = nn.Conv2d(widths[2], num_classes, kernel_size=1)
        self.score_pool4 = nn.Conv2d(widths[3], num_classes, kernel_size=1)
        self.score_final = nn.Conv2d(ch, num_classes, kernel_size=1)
        init_weights(self)
        init_classifier(self.score_pool3, self.score_pool4, self.score_final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] float → [N, num_classes, H, W] logits."""
        padded = pad_to_multiple(x, self.stride)
        h = padded
        pools = []
        for stage in self.stages:
            h = self.pool(stage(h))
            pools.append(h)
        pool3, pool4 = pools[2], pools[3]
        score = self.score_final(self.fc(h))
        score = resize_to(score, pool4) + self.score_pool4(pool4)
        score = resize_to(score, pool3) + self.score_pool3(pool3)
        return crop_to(resize_to(score, padded), x)
