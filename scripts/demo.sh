#!/usr/bin/env bash
# `make demo`: the workflow so far, headless in a real QGIS, on the generated sample scene.
# 1. write the seeded sample scene (4-band UInt16 UTM raster, labels in EPSG:4326);
# 2. export training chips through qgis_process (geoseg:exportchips) with a spatial-block split;
# 3. train a UNet briefly on the CPU through qgis_process (geoseg:train);
# 4. segment a held-out scene (same generator, another seed) with the ONNX model (geoseg:segment);
# 5. assess that map against the held-out scene's label polygons (geoseg:assess);
# 6. print what was exported, the validation metrics and the held-out accuracy;
# 7. write a preview PNG (image | prediction | reference) and a styled QGIS project.
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

echo "== 1/5 sample scene"
"$py" -m geoseg.core sample "$out/data" --seed 0 --width 768 --height 640

echo "== 2/5 export chips (scripts/qgis_process run geoseg:exportchips)"
"$repo/scripts/qgis_process" run geoseg:exportchips -- \
  INPUT="$out/data/sample_scene.tif" LABELS="$out/data/sample_labels.gpkg" \
  CLASS_FIELD=class NAME_FIELD=name CHIP_SIZE=128 STRIDE_X=64 STRIDE_Y=64 MODE=0 \
  VALIDATION_FRACTION=0.2 SPLIT_METHOD=1 BLOCK_SIZE=256 SEED=0 \
  OUTPUT_DIR="$out/chips" INDEX="$out/chip_index.gpkg" 2>&1 | grep -E "^(Exported|ERROR)"

echo "== 3/5 train a UNet on the CPU (scripts/qgis_process run geoseg:train, about 2 minutes)"
"$repo/scripts/qgis_process" run geoseg:train -- \
  CHIPS="$out/chips" ARCHITECTURE=0 EPOCHS=12 BATCH_SIZE=8 LEARNING_RATE=0.005 LOSS=2 DEVICE=1 SEED=0 \
  MODEL_OPTIONS='{"base_width": 16}' OUTPUT_MODEL="$out/unet.pt" 2>&1 | grep -E "^(Best validation|ERROR)"

echo "== 4/5 segment a held-out scene (scripts/qgis_process run geoseg:segment)"
"$py" -m geoseg.core sample "$out/heldout" --seed 1 --width 768 --height 640 >/dev/null
"$repo/scripts/qgis_process" run geoseg:segment -- \
  INPUT="$out/heldout/sample_scene.tif" MODEL="$out/unet.onnx" OUTPUT="$out/heldout_classes.tif" \
  2>&1 | grep -E "^(Segmented|ERROR)"

echo "== 5/5 assess it against the held-out labels (scripts/qgis_process run geoseg:assess)"
"$repo/scripts/qgis_process" run geoseg:assess -- \
  PREDICTION="$out/heldout_classes.tif" REFERENCE_VECTOR="$out/heldout/sample_labels.gpkg" CLASS_FIELD=class \
  OUTPUT_REPORT="$out/heldout_report.html" 2>&1 | grep -E "^(Overall accuracy|ERROR)"

"$py" - "$out" <<'PY'
import json, sys
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
report = json.load(open(f"{out}/heldout_report.json"))
print(f"\nheld-out scene ({report['total']} labelled pixels): OA {report['overall_accuracy']:.3f}, "
      f"mIoU {report['mean_iou']:.3f}, macro F1 {report['macro_f1']:.3f}")
for c in report["classes"]:
    print(f"  IoU {c['name']:<12}{'n/a' if c['iou'] is None else format(c['iou'], '.3f')}")
print(f"\nwritten: {out}/chips (images/, masks/, chips.csv, dataset.json), {out}/chip_index.gpkg,")
print(f"         {out}/unet.pt, unet.onnx, unet.metrics.csv (per-epoch curves),")
print(f"         {out}/heldout_classes.tif, heldout_report.html and .json")
PY
"$py" "$repo/scripts/demo_project.py" "$out" 2>&1 | grep -E "^(wrote|demo_project)"
echo "demo finished in $(( $(date +%s) - start )) s"
