"""U-Net (Ronneberger et al. 2015) as in the course seeds, sized for CPU training.

Encoder: `depth` levels of two 3×3 conv-(BN)-ReLU layers and 2×2 max-pool, widths
`base_width · 2^level`; a bottleneck at `base_width · 2^depth`; decoder: 2×2 transposed
conv (halves the width), concatenation with the skip, two 3×3 convs; 1×1 classifier.
`dropout` (Dropout2d, whole feature maps) acts on the bottleneck and on every decoder stage
but the last (full resolution, just before the classifier), where the features are most
abstract and over-fitting on few chips is most likely.
The input is padded to a multiple of 2^depth and the logits cropped back (see `layers`).

With `encoder` a ResNet (`build_unet`, the registry's "unet"), the encoder is that ResNet
(`resnet.py`, torchvision's parameter names, so ImageNet or TorchGeo weights load into it) and
the decoder is segmentation-models-pytorch's Unet decoder: five stages, each a ×2 nearest
upsampling, concatenation with the ResNet feature map of that scale (layer3, layer2, layer1, the
stem; none at full resolution) and two 3×3 conv-BN-ReLU; widths base_width·(8, 4, 2, 1, ½) —
smp's (256, 128, 64, 32, 16) at the default base_width 32. `depth`, `batch_norm` and `norm` belong
to the plain UNet and are not used (the ResNet has five stages and batch norm throughout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DoubleConv, conv_bn_relu, crop_to, init_classifier, init_weights, pad_to_multiple
from .resnet import ResNetEncoder, load_torchvision_weights


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
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.options = {
            "depth": depth,
            "base_width": base_width,
            "batch_norm": batch_norm,
            "dropout": dropout,
            "norm": norm,
        }
        self.stride = 2**depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        ch = in_channels
        for w in widths[:-1]:
            self.encoder.append(DoubleConv(ch, w, batch_norm, norm))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, widths[-1], batch_norm, norm)
        self.bottleneck_dropout = _dropout(dropout)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_dropout = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[level + 1], widths[level], kernel_size=2, stride=2))
            self.decoder.append(DoubleConv(2 * widths[level], widths[level], batch_norm, norm))
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


class ResNetUNet(nn.Module):
    """U-Net on a ResNet-18/34/50 encoder (skips from the stem and the first three stages)."""

    architecture = "unet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        base_width: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stride = 32
        self.encoder = ResNetEncoder(encoder, in_channels, output_stride=32)
        widths = [max(1, base_width * 8 // 2**i) for i in range(5)]
        skips = [*reversed(self.encoder.stage_channels[:-1]), 0]  # layer3, layer2, layer1, stem, none
        ch = self.encoder.stage_channels[-1]
        self.decoder = nn.ModuleList()
        self.decoder_dropout = nn.ModuleList()
        for i, (w, skip) in enumerate(zip(widths, skips, strict=True)):
            self.decoder.append(nn.Sequential(conv_bn_relu(ch + skip, w), conv_bn_relu(w, w)))
            self.decoder_dropout.append(_dropout(dropout) if i < 4 else nn.Identity())
            ch = w
        self.head = nn.Conv2d(ch, num_classes, kernel_size=1)
        init_weights(self.decoder)
        init_classifier(self.head)
        self.encoder_init: dict[str, object] | None = None  # how encoder_weights were adapted (the card's)
        if encoder_weights:
            self.encoder_init = load_torchvision_weights(self.encoder, encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] float → [N, num_classes, H, W] logits."""
        feats = self.encoder.stages(pad_to_multiple(x, self.stride))
        h = feats[-1]
        skips = [*reversed(feats[:-1]), None]
        for block, drop, skip in zip(self.decoder, self.decoder_dropout, skips, strict=True):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            if skip is not None:
                h = torch.cat([h, skip], dim=1)
            h = drop(block(h))
        return crop_to(self.head(h), x)


def build_unet(
    in_channels: int,
    num_classes: int,
    depth: int = 4,
    base_width: int = 32,
    batch_norm: bool = True,
    dropout: float = 0.0,
    encoder: str = "none",
    encoder_weights: str | None = None,
    norm: str = "batch",
) -> nn.Module:
    """The registry's "unet": the plain U-Net, or with `encoder` a ResNet name, `ResNetUNet`."""
    if encoder == "none":
        if encoder_weights:
            raise ValueError("encoder_weights need a ResNet encoder (set encoder to resnet18, resnet34 or resnet50)")
        return UNet(in_channels, num_classes, depth, base_width, batch_norm, dropout, norm)
    if norm != "batch":
        raise ValueError("norm group applies to the plain UNet; the ResNet encoder uses batch norm")
    return ResNetUNet(in_channels, num_classes, encoder, encoder_weights, base_width, dropout)
