"""ResNet-18/34/50 encoders whose parameter names are torchvision's, written in plain torch.

torchvision cannot be installed beside GeoSeg's CPU torch, but its ImageNet ResNet state
dicts are the most common pretrained weights around; keeping the exact key layout
(`conv1`, `bn1`, `layer1.0.conv1`, …, `downsample.0/1`) lets `load_torchvision_weights`
initialise this encoder from such a `.pth` file without torchvision. The classifier
(`avgpool`, `fc`) is left out: segmentation needs only the feature maps.

Output stride: 32 keeps every stride (UNet's encoder: `stages` gives the five feature maps at
1/2 … 1/32 for the skip connections, as segmentation-models-pytorch's Unet takes them); 16 or 8
trade the stride of the last stage, or last two stages, for dilation, as in DeepLabv3, so the
deep features stay at 1/16 or 1/8 of the input.

Weights whose first convolution has another band count than the raster are adapted as timm and
segmentation-models-pytorch do (`adapt_first_conv`): the filters are repeated cyclically over
the new bands and rescaled by source bands / new bands, so a constant image gives the same first
activations; one band gets the sum of the filters.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile

import torch
from torch import nn

from .layers import init_weights

# name → (block type, blocks per stage)
RESNET_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def refusal_reason(exc: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only refusal that names what was refused (the whole text is long)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else "")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs plus identity (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, as torchvision's v1.5), 1×1 expand ×4, plus identity (ResNet-50)."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet stem and four stages; `forward` returns (layer1 features at 1/4, layer4 features)."""

    def __init__(self, name: str = "resnet18", in_channels: int = 3, output_stride: int = 16) -> None:
        super().__init__()
        if name not in RESNET_LAYOUTS:
            raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(RESNET_LAYOUTS)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride!r}")
        kind, counts = RESNET_LAYOUTS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        self._in_ch = 64
        self._dilation = 1
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate3, dilate4 = output_stride == 8, output_stride <= 16
        self.layer1 = self._make_layer(block, 64, counts[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2, dilate=False)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2, dilate=dilate3)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=2, dilate=dilate4)
        self.low_level_channels = 64 * block.expansion
        self.out_channels = 512 * block.expansion
        self.stage_channels = (64, *(w * block.expansion for w in (64, 128, 256, 512)))
        init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, count: int, stride: int, dilate: bool
    ) -> nn.Sequential:
        """A stage; with `dilate` its stride becomes dilation (the first block keeps the previous rate)."""
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(_conv1x1(self._in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        blocks: list[nn.Module] = [block(self._in_ch, planes, stride, first_dilation, downsample)]
        self._in_ch = out_ch
        blocks += [block(out_ch, planes, 1, self._dilation) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature maps UNet's decoder joins: stem (1/2), layer1 (1/4) … layer4 (1/32 at stride 32)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        feats = [stem]
        h = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = layer(h)
            feats.append(h)
        return feats


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, str]:
    """First-conv filters for `in_channels` bands from filters for `weight.shape[1]` bands, as timm
    and segmentation-models-pytorch adapt them; returns (filters, what was done, in words).

    Same count: unchanged. One band: the sum of the filters. Otherwise band i gets source filter
    i mod source bands (4 bands on RGB: R, G, B, R; 12 on 13: the first 12), all rescaled by
    source / new bands so that the response to a constant image is unchanged.
    """
    source = int(weight.shape[1])
    if in_channels == source:
        return weight, f"none ({source} bands, as the weights)"
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True), f"{source} → 1 band: the sum of the {source} band filters"
    index = torch.arange(in_channels) % source
    adapted = weight[:, index] * (source / in_channels)
    how = "first" if in_channels < source else "repeated cyclically"
    return adapted, (
        f"{source} → {in_channels} bands: the {source} band filters {how}, scaled by {source}/{in_channels}"
    )


def _read_state(path: str) -> dict:
    """A state dict from a `.pth`, never unpickling objects (weights_only); ValueError on a bad file."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"encoder_weights file not found: {path!r}")
    with open(path, "rb") as f:
        head = f.read(1)
    if head != b"\x80" and not zipfile.is_zipfile(path):  # neither torch's zip format nor a raw pickle
        raise ValueError(f"encoder_weights {path!r} is not a readable PyTorch weights file (not written by torch.save)")
    try:
        with warnings.catch_warnings():  # "pickle protocol 4" notices: noise here
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused it: Python objects, which could run code
        reason = refusal_reason(exc)
        raise ValueError(
            f"encoder_weights {path!r} holds Python objects other than plain weights, which could run code "
            f"when loaded; GeoSeg refuses to load it ({reason[:120]})"
        ) from None
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the user's input error)
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"encoder_weights {path!r} is not a readable torch state dict ({detail})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"encoder_weights {path!r} does not hold a state dict")
    return state


def layout_of(state: dict) -> str | None:
    """Which of RESNET_LAYOUTS a torchvision-layout state dict is (None: not a ResNet of those)."""
    counts = tuple(
        len({k.split(".")[1] for k in state if isinstance(k, str) and k.startswith(f"layer{i}.")}) for i in range(1, 5)
    )
    kind = "bottleneck" if any(isinstance(k, str) and ".conv3." in k for k in state) else "basic"
    return next((name for name, layout in RESNET_LAYOUTS.items() if layout == (kind, counts)), None)


def load_torchvision_weights(encoder: ResNetEncoder, path: str) -> dict[str, object]:
    """Initialise `encoder` from a torchvision- or timm-layout ResNet state dict (`.pth`); ValueError on a
    bad file. Returns {"weights_in_channels": n, "first_conv": how it was adapted}.

    `fc.*` is ignored (timm and TorchGeo files carry it too), `num_batches_tracked` may be absent
    (older torchvision files), and `conv1.weight` is adapted to the encoder's band count with
    `adapt_first_conv` (any source band count: RGB, 13 Sentinel-2 bands, Landsat's 6-11).
    """
    state = {k: v for k, v in _read_state(path).items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        other = layout_of(state)
        if other is not None:
            raise ValueError(f"encoder_weights {path!r} are {other} weights, not {encoder.name} weights")
        raise ValueError(
            f"encoder_weights {path!r} do not match a torchvision {encoder.name}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    conv1 = state["conv1.weight"]
    if not isinstance(conv1, torch.Tensor) or conv1.ndim != 4 or tuple(conv1.shape[2:]) != (7, 7):
        shape = tuple(conv1.shape) if isinstance(conv1, torch.Tensor) else type(conv1).__name__
        raise ValueError(f"encoder_weights {path!r}: conv1.weight has shape {shape}, expected [64, bands, 7, 7]")
    state["conv1.weight"], how = adapt_first_conv(conv1, encoder.in_channels)
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(
            f"encoder_weights {path!r} are not {encoder.name} weights: shapes differ for {wrong[:3]} "
            f"(weights for another ResNet?)"
        )
    encoder.load_state_dict(state, strict=False)
    return {"weights_in_channels": int(conv1.shape[1]), "first_conv": how}
