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

With `encoder` a ResNet (`build_unetpp`, the registry's "unetpp"), column 0 is that ResNet's stem and
first four stages (strides 2-32, as segmentation-models-pytorch's UnetPlusPlus), so torchvision or
TorchGeo weights initialise it; the nested decoder runs from stride 32 up to stride 2 and a last
upsampling block returns to full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DoubleConv, conv_bn_relu, crop_to, init_classifier, init_weights, pad_to_multiple, resize_to
from .resnet import ResNetEncoder, load_torchvision_weights


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


class ResNetUNetPlusPlus(nn.Module):
    """UNet++ on a ResNet-18/34/50 encoder: the nested pathways join the stem and stage outputs."""

    architecture = "unetpp"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        base_width: int = 32,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.stride = 32
        self.depth = 4
        self.deep_supervision = deep_supervision
        self.encoder = ResNetEncoder(encoder, in_channels, output_stride=32)
        enc = list(self.encoder.stage_channels)  # X[i][0], i = 0..4: strides 2, 4, 8, 16, 32
        widths = [base_width * 2**i for i in range(self.depth)]  # decoder width of levels 0..3
        self.nodes = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                below = enc[i + 1] if j == 1 else widths[i + 1]
                c_in = enc[i] + (j - 1) * widths[i] + below
                self.nodes[f"{i}_{j}"] = nn.Sequential(
                    conv_bn_relu(c_in, widths[i]), conv_bn_relu(widths[i], widths[i])
                )
        n_heads = self.depth if deep_supervision else 1
        self.heads = nn.ModuleList(  # stride 2 → full resolution, then 1×1 logits
            nn.Sequential(conv_bn_relu(widths[0], widths[0]), nn.Conv2d(widths[0], num_classes, kernel_size=1))
            for _ in range(n_heads)
        )
        init_weights(self.nodes)
        init_weights(self.heads)
        init_classifier(
            *(m for h in self.heads for m in h.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
        )
        self.encoder_init: dict[str, object] | None = None  # how encoder_weights were adapted (the card's)
        if encoder_weights:
            self.encoder_init = load_torchvision_weights(self.encoder, encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """[N, C, H, W] → logits [N, K, H, W]; a list of 4 of them when deep-supervised and training."""
        feats = self.encoder.stages(pad_to_multiple(x, self.stride))
        grid: list[list[torch.Tensor]] = [[f] for f in feats]
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                up = F.interpolate(grid[i + 1][j - 1], scale_factor=2.0, mode="nearest")
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i], up], dim=1)))
        top = grid[0][1:]

        def head(h: nn.Module, t: torch.Tensor) -> torch.Tensor:
            return crop_to(h(F.interpolate(t, scale_factor=2.0, mode="nearest")), x)

        if self.deep_supervision and self.training:
            return [head(h, t) for h, t in zip(self.heads, top, strict=True)]
        return head(self.heads[-1], top[-1])


def build_unetpp(
    in_channels: int,
    num_classes: int,
    depth: int = 4,
    base_width: int = 32,
    batch_norm: bool = True,
    deep_supervision: bool = False,
    encoder: str = "none",
    encoder_weights: str | None = None,
) -> nn.Module:
    """The registry's "unetpp": the plain UNet++, or with `encoder` a ResNet name, `ResNetUNetPlusPlus`
    (its depth is the ResNet's: 4 nested levels; `depth` and `batch_norm` apply to the plain one)."""
    if encoder == "none":
        if encoder_weights:
            raise ValueError("encoder_weights need a ResNet encoder (set encoder to resnet18, resnet34 or resnet50)")
        return UNetPlusPlus(in_channels, num_classes, depth, base_width, batch_norm, deep_supervision)
    return ResNetUNetPlusPlus(in_channels, num_classes, encoder, encoder_weights, base_width, deep_supervision)
