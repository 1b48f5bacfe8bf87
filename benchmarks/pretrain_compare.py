"""Initialisation comparison (issue 15): UNet-ResNet18 fine-tuned from random weights against a
pretrained encoder, same data, epochs and seed.

Offline there are no ImageNet weights, so this is an honest stand-in: the ResNet-18 encoder is first
trained supervised on one sample scene (seed 1, all labels), saved in torchvision's key layout and
loaded through the normal ENCODER_WEIGHTS file path; then UNet-ResNet18 is trained on a small label
set (a quarter of the polygons) of another sample scene (seed 2) from (i) random weights and
(ii) those weights. The figures are NOT those of ImageNet weights: the pretraining scene is synthetic
and small, and it resembles the target scene far more than ImageNet photographs do.

Part of `make bench` (256², 6 epochs, about a minute on 2 cores); alone: `python -m benchmarks.pretrain_compare
[--size 256] [--epochs 6]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

CHIP = 64
OPTIONS = {"base_width": 8}


def _chips(root: str, seed: int, size: int, label_fraction: float) -> str:
    from geoseg.core.chips import ExportParams, export_chips
    from geoseg.core.sample import make_sample_scene

    scene = make_sample_scene(os.path.join(root, f"scene{seed}"), seed=seed, width=size, height=size, bands=3,
                              label_fraction=label_fraction)  # fmt: skip
    out = os.path.join(root, f"chips{seed}")
    export_chips(
        ExportParams(
            scene.raster,
            scene.labels,
            out,
            class_field=scene.class_field,
            chip_size=CHIP,
            validation_fraction=0.25,
            seed=seed,
        )  # fmt: skip
    )
    return out


def _train(chips: str, model: str, epochs: int, weights: str | None = None):
    from geoseg.core.train import TrainParams, train

    p = TrainParams(chips, model, architecture="unet", encoder="resnet18", encoder_weights=weights, epochs=epochs,
                    batch_size=4, device="cpu", seed=0, model_options=OPTIONS)  # fmt: skip
    return train(p)


def run(size: int = 256, epochs: int = 6, pretrain_epochs: int = 10) -> dict:
    import torch

    from geoseg.core.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="geoseg-pretrain-") as root:
        t0 = time.perf_counter()
        source = _chips(root, 1, size, 1.0)
        target = _chips(root, 2, size, 0.25)
        pre = _train(source, os.path.join(root, "pre.pt"), pretrain_epochs)
        state = load_checkpoint(pre.model_path)["state_dict"]
        encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        weights = os.path.join(root, "resnet18-standin.pth")
        torch.save(encoder, weights)  # torchvision layout: conv1.*, bn1.*, layer1-4.* (no fc)
        random_init = _train(target, os.path.join(root, "random.pt"), epochs)
        pretrained = _train(target, os.path.join(root, "pretrained.pt"), epochs, weights)
        return {
            "size": size,
            "epochs": epochs,
            "pretrain_epochs": pretrain_epochs,
            "pretrain_val_miou": pre.val_miou,
            "random_val_miou": random_init.val_miou,
            "pretrained_val_miou": pretrained.val_miou,
            "encoder_init": pretrained.card.encoder.to_dict() if pretrained.card.encoder else None,
            "seconds": time.perf_counter() - t0,
        }


def report(r: dict) -> list[str]:
    """BENCHMARKS.md section: the two initialisations side by side, with the caveat."""
    return [
        "## Initialisation: random against a pretrained encoder (stand-in)",
        "",
        f"UNet-ResNet18 (base width 8) on a {r['size']}² sample scene (seed 2), a quarter of its label polygons, "
        f"{CHIP}-px chips, {r['epochs']} epochs, batch 4, seed 0, CPU. The encoder weights are a stand-in: ResNet-18 "
        f"trained supervised on another sample scene (seed 1, all labels, {r['pretrain_epochs']} epochs, its own "
        f"validation mIoU {r['pretrain_val_miou']:.3f}), saved in torchvision's layout and loaded through "
        "ENCODER_WEIGHTS. They are NOT ImageNet or TorchGeo weights (none can be downloaded on this machine).",
        "",
        "| initialisation | best validation mIoU |",
        "|---|---|",
        f"| random | {r['random_val_miou']:.3f} |",
        f"| stand-in pretrained encoder | {r['pretrained_val_miou']:.3f} |",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    a = ap.parse_args()
    r = run(a.size, a.epochs, a.pretrain_epochs)
    print(
        f"UNet-ResNet18, {r['size']}² sample scene (seed 2, 1/4 of the labels), {r['epochs']} epochs, seed 0:\n"
        f"  random initialisation:            best validation mIoU {r['random_val_miou']:.3f}\n"
        f"  stand-in pretrained encoder:      best validation mIoU {r['pretrained_val_miou']:.3f}\n"
        f"  (encoder pretrained supervised on scene seed 1 for {r['pretrain_epochs']} epochs, its own "
        f"val mIoU {r['pretrain_val_miou']:.3f}; NOT ImageNet weights)\n"
        f"  {r['seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    main()
