#!/usr/bin/env bash
# `make demo`: the workflow so far, headless in a real QGIS, on the generated sample scene.
# 1. write the seeded sample scene (4-band UInt16 UTM raster, labels in EPSG:4326);
# 2. export training chips through qgis_process (geoseg:exportchips) with a spatial-block split;
# 3. train a UNet briefly on the CPU through qgis_process (geoseg:train);
# 4. segment the whole scene with the ONNX model (geoseg:segment);
# 5. print what was exported, the validation metrics, and the map's agreement with the truth.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-demo_output}"
py="$repo/.venv/bin/python"

if [ -e "$out" ] && [ ! -f "$out/.geoseg-demo" ]; then
  echo "demo: $out exists and was not made by the demo; set DEMO_OUT to a new folder." >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out"
touch "$out/.geoseg-demo"
start=$(date +%s)

echo "== 1/4 sample scene"
"$py" -m geoseg.core sample "$out/data" --seed 0 --width 768 --height 640

echo "== 2/4 export chips (scripts/qgis_process run geoseg:exportchips)"
"$repo/scripts/qgis_process" run geoseg:exportchips -- \
  INPUT="$out/data/sample_scene.tif" LABELS="$out/data/sample_labels.gpkg" \
  CLASS_FIELD=class NAME_FIELD=name CHIP_SIZE=128 STRIDE_X=64 STRIDE_Y=64 MODE=0 \
  VALIDATION_FRACTION=0.2 SPLIT_METHOD=1 BLOCK_SIZE=256 SEED=0 \
  OUTPUT_DIR="$out/chips" INDEX="$out/chip_index.gpkg" 2>&1 | grep -E "^(Exported|ERROR)"

echo "== 3/4 train a UNet on the CPU (scripts/qgis_process run geoseg:train, about 2 minutes)"
"$repo/scripts/qgis_process" run geoseg:train -- \
  CHIPS="$out/chips" ARCHITECTURE=0 EPOCHS=12 BATCH_SIZE=8 LEARNING_RATE=0.005 LOSS=2 DEVICE=1 SEED=0 \
  MODEL_OPTIONS='{"base_width": 16}' OUTPUT_MODEL="$out/unet.pt" 2>&1 | grep -E "^(Best validation|ERROR)"

echo "== 4/4 segment the scene (scripts/qgis_process run geoseg:segment)"
"$repo/scripts/qgis_process" run geoseg:segment -- \
  INPUT="$out/data/sample_scene.tif" MODEL="$out/unet.onnx" OUTPUT="$out/sample_classes.tif" \
  2>&1 | grep -E "^(Segmented|ERROR)"

"$py" - "$out" <<'PY'
import csv, json, sys
import numpy as np
from osgeo import gdal
out = sys.argv[1]
d = json.load(open(f"{out}/chips/dataset.json"))
print(f"\nchips: {d['chips']} ({d['split']['train']} train, {d['split']['validation']} validation), "
      f"{d['chip_size']} px, {d['in_channels']} bands {d['data_type']}, CRS {d['crs']['authid']}")
total = sum(d["class_pixel_counts"].values())
print(f"{'class':<12}{'value':>6}{'pixels':>10}{'share':>8}")
for c in d["classes"]:
    n = d["class_pixel_counts"][str(c["value"])]
    print(f"{c['name']:<12}{c['value']:>6}{n:>10}{n / total:>8.1%}")
print("band mean:", [round(x, 1) for x in d["normalization"]["mean"]])
print("band std: ", [round(x, 1) for x in d["normalization"]["std"]])
card = json.loads(__import__("torch").load(f"{out}/unet.pt", weights_only=True)["card"])
m = card["metrics"]
print(f"\nUNet, best epoch {m['epoch']}: validation mIoU {m['val_miou']:.3f}, OA {m['val_oa']:.3f}, "
      f"macro F1 {m['val_macro_f1']:.3f}")
for name, iou in m["per_class_iou"].items():
    print(f"  IoU {name:<12}{'n/a' if iou is None else f'{iou:.3f}'}")
print(f"recommended tiling: chip {card['chip_size']}, stride {card['recommended']['stride']}, "
      f"crop {card['recommended']['crop']}")
gdal.UseExceptions()
pred = gdal.Open(f"{out}/sample_classes.tif").ReadAsArray()
truth = gdal.Open(f"{out}/data/sample_truth.tif").ReadAsArray()
ok = truth != 255
print(f"\nclass map vs the scene's truth ({ok.sum()} valid pixels, training scene: optimistic): "
      f"agreement {(pred[ok] == truth[ok]).mean():.3f}")
print(f"\nwritten: {out}/chips (images/, masks/, chips.csv, dataset.json), {out}/chip_index.gpkg,")
print(f"         {out}/unet.pt, unet.onnx, unet.metrics.csv (per-epoch curves), sample_classes.tif")
PY
echo "demo finished in $(( $(date +%s) - start )) s"
