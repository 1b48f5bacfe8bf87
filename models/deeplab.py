"""DeepLabv3+ (Chen et al. 2018) on a torchvision-compatible ResNet encoder.

Encoder: ResNet-18/34/50 (`resnet.py`) at output stride 16 or 8 (dilated last stages);
`encoder_weights` (a local torchvision ResNet `.pth`) initialises it, the first convolution
adapted to the band count as timm does (`resnet.adapt_first_conv`). ASPP: a 1×1 branch, one
3×3 branch per atrous rate and an image-pooling branch, concatenated and projected to
`decoder_channels` (Dropout 0.1, as in DeepLabv3).
Decoder: ASPP output upsampled ×(stride/4), concatenated with the layer1 features reduced to
48 channels (the paper's choice), two 3×3 convs, 1×1 classifier, bilinear ×4.

The image-pooling branch has no BatchNorm: on a 1×1 map BN fails for training batches of
one and is noisy for small ones; a biased conv does the same job. It also makes the
receptive field the whole image (global context), so `receptive.receptive_field_radius`
reports its cap for this architecture. The paper uses rates (12, 24, 36) at output stride 8;
the default stays (6, 12, 18) so that small chips are not dominated by padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import conv_bn_relu, crop_to, init_classifier, init_weights, pad_to_multiple, resize_to
from .resnet import ResNetEncoder, load_torchvision_weights

LOW_LEVEL_CHANNELS = 48


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel dilated convs and global context at one scale."""

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_ch, out_ch, kernel_size=1)])
        self.branches.extend(conv_bn_relu(in_ch, out_ch, dilation=r) for r in rates)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=True), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(conv_bn_relu(out_ch * (len(rates) + 2), out_ch, kernel_size=1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        feats.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(feats, dim=1))


class DeepLabV3Plus(nn.Module):
    """ResNet + ASPP + low-level decoder; logits have the input's H and W."""

    architecture = "deeplabv3plus"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        output_stride: int = 16,
        atrous_rates: Sequence[int] = (6, 12, 18),
        decoder_channels: int = 128,
    ) -> None:
        super().__init__()
        rates = [int(r) for r in atrous_rates]
        self.options = {
            "encoder": encoder,
            "encoder_weights": encoder_weights,
            "output_stride": output_stride,
            "atrous_rates": rates,
            "decoder_channels": decoder_channels,
        }
        self.stride = output_stride
        self.encoder = ResNetEncoder(encoder, in_channels, output_stride)
        self.aspp = ASPP(self.encoder.out_channels, decoder_channels, rates)
        self.low_level = conv_bn_relu(self.encoder.low_level_channels, LOW_LEVEL_CHANNELS, kernel_size=1)
        self.decoder = nn.Sequential(
            conv_bn_relu(decoder_channels + LOW_LEVEL_CHANNELS, decoder_channels),
            conv_bn_relu(decoder_channels, decoder_channels),
        )
        self.head = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        init_weights(self.aspp)
        init_weights(self.low_level)
        init_weights(self.decoder)
        init_classifier(self.head)
        self.encoder_init: dict[str, object] | None = None  # how encoder_weights were adapted (the card's)
        if encoder_weights:
            self.encoder_init = load_torchvision_weights(self.encoder, encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] float → [N, num_classes, H, W] logits."""
        padded = pad_to_multiple(x, self.stride)
        low, high = self.encoder(padded)
        low = self.low_level(low)
        h = resize_to(self.aspp(high), low)
        h = self.head(self.decoder(torch.cat([h, low], dim=1)))
        return crop_to(resize_to(h, padded), x)
