"""U-Net (Ronneberger et al. 2015) as in the course seeds, sized for CPU training.

Encoder: `depth` levels of two 3×3 conv-(BN)-ReLU layers and 2×2 max-pool, widths
`base_width · 2^level`; a bottleneck at `base_width · 2^depth`; decoder: 2×2 transposed
conv (halves the width), concatenation with the skip, two 3×3 convs; 1×1 classifier.
`dropout` (Dropout2d, whole feature maps) acts on the bottleneck and on every decoder stage
but the last (full resolution, just before the classifier), where the features are most
abstract and over-fitting on few chips is most likely.
The input is padded to a multiple of 2^depth and the logits cropped back (see `layers`).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import DoubleConv, crop_to, init_classifier, init_weights, pad_to_multiple


def _dropout(p: float) -> nn.Module:
    """Dropout2d, or Identity when p is 0 so the exported graph carries no no-op node."""
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


class UNet(nn.Module):
    """Encoder/decoder with a skip at every level; logits have the input's H and W."""

    architecture = "unet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 4,
        base_width: int = 32,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.options = {"depth": depth, "base_width": base_width, "batch_norm": batch_norm, "dropout": dropout}
        self.stride = 2**depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        ch = in_channels
        for w in widths[:-1]:
            self.encoder.append(DoubleConv(ch, w, batch_norm))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, widths[-1], batch_norm)
        self.bottleneck_dropout = _dropout(dropout)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_dropout = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[level + 1], widths[level], kernel_size=2, stride=2))
            self.decoder.append(DoubleConv(2 * widths[level], widths[level], batch_norm))
            self.decoder_dropout.append(_dropout(dropout) if level > 0 else nn.Identity())
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        init_weights(self)
        init_classifier(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] float → [N, num_classes, H, W] logits."""
        h = pad_to_multiple(x, self.stride)
        skips = []
        for block in self.encoder:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck_dropout(self.bottleneck(h))
        for up, block, drop, skip in zip(self.up, self.decoder, self.decoder_dropout, reversed(skips), strict=True):
            h = drop(block(torch.cat([up(h), skip], dim=1)))
        return crop_to(self.head(h), x)
