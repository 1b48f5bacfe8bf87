"""The bad-input table (issue 7): every input GeoSeg must refuse, with the message it gives, and the
positive controls that must work. tests/e2e/test_bad_inputs.py runs each case through processing.run
and scripts/qgis_process; docs/bad_inputs.md is rendered from this table (a test keeps it in sync).

Pure data, no QGIS/GDAL imports, so that `python tests/support/bad_input_cases.py` regenerates the docs.

In `params`, "{in}" stands for the folder of input fixtures and "{out}" for the case's own
(initially empty, or holding `existing`) output folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs", "bad_inputs.md")
SPACED = "{in}/données ø é"  # a folder whose name has spaces and non-ASCII characters
UNWRITABLE = "/sys/geoseg-bad-inputs"  # root may write anywhere but /sys
TINY = json.dumps({"base_width": 4, "depth": 2})


@dataclass(frozen=True)
class Case:
    id: str
    alg: str  # geoseg:<alg>
    what: str  # the input, in words (docs)
    params: dict[str, object]
    message: str = ""  # substring of the one-line refusal, the same both ways
    ok: bool = False  # a positive control: it must work
    result: str = ""  # docs: what a positive control produces
    fsize: int | None = None  # simulate a full disk: largest file the run may write (RLIMIT_FSIZE bytes)
    existing: dict[str, str] = field(default_factory=dict)  # {out}-relative files present before the run


def _with(base: dict[str, object], **changes: object) -> dict[str, object]:
    out = dict(base)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


EXPORT = {
    "INPUT": "{in}/rgb.tif",
    "LABELS": "{in}/labels.gpkg",
    "CLASS_FIELD": "cls",
    "CHIP_SIZE": 32,
    "OUTPUT_DIR": "{out}/chips",
}
TRAIN = {
    "CHIPS": "{in}/chips",
    "OUTPUT_MODEL": "{out}/m.pt",
    "EPOCHS": 1,
    "BATCH_SIZE": 4,
    "DEVICE": 1,
    "MODEL_OPTIONS": TINY,
}
SEGMENT = {"INPUT": "{in}/rgb.tif", "MODEL": "{in}/model.onnx", "OUTPUT": "{out}/classes.tif", "DEVICE": 1}
ASSESS = {"PREDICTION": "{in}/pred.tif", "REFERENCE": "{in}/ref.tif", "OUTPUT_REPORT": "{out}/report.json"}
ONNX = {"MODEL": "{in}/model.pt", "OUTPUT": "{out}/m.onnx"}
NEVER = "GeoSeg never overwrites"
NOTHING = "INPUT: every pixel is nodata (its nodata value, NaN or masked), so there is nothing to segment"
FULL = "The disk is full, or a file-size limit was reached; nothing was kept."

CASES: list[Case] = [
    # ------------------------------------------------------------------ exportchips
    Case(
        "export-empty-labels",
        "exportchips",
        "label layer without features",
        _with(EXPORT, LABELS="{in}/empty.gpkg"),
        "LABELS: the layer has no features",
    ),
    Case(
        "export-point-labels",
        "exportchips",
        "points as labels",
        _with(EXPORT, LABELS="{in}/points.gpkg"),
        "LABELS: the layer holds Point geometries",
    ),
    Case(
        "export-line-labels",
        "exportchips",
        "lines as labels",
        _with(EXPORT, LABELS="{in}/lines.gpkg"),
        "LABELS: the layer holds Line String geometries",
    ),
    Case(
        "export-all-nodata",
        "exportchips",
        "raster whose every pixel is nodata",
        _with(EXPORT, INPUT="{in}/nodata.tif"),
        "No chip was exported: of 4 grid chips, 4 hold only nodata",
    ),
    Case(
        "export-nan-only",
        "exportchips",
        "Float32 raster holding only NaN (no nodata value set)",
        _with(EXPORT, INPUT="{in}/nan_only.tif"),
        "No chip was exported: of 4 grid chips, 4 hold only nodata",
    ),
    Case(
        "export-nan-hole",
        "exportchips",
        "Float32 raster with a NaN hole (no nodata value set)",
        _with(EXPORT, INPUT="{in}/nan_hole.tif"),
        ok=True,
        result="works: NaN pixels are nodata (mask 255, left out of the band statistics)",
    ),
    Case(
        "export-degree-raster",
        "exportchips",
        "geographic (EPSG:4326, degree) raster",
        _with(EXPORT, INPUT="{in}/geo.tif"),
        ok=True,
        result="works: chips keep EPSG:4326 (a model trained on them expects degree rasters)",
    ),
    Case(
        "export-chip-size-zero",
        "exportchips",
        "CHIP_SIZE 0",
        _with(EXPORT, CHIP_SIZE=0),
        "CHIP_SIZE must be at least 8 (got 0)",
    ),
    Case(
        "export-chip-size-negative",
        "exportchips",
        "CHIP_SIZE −32",
        _with(EXPORT, CHIP_SIZE=-32),
        "CHIP_SIZE must be at least 8 (got -32)",
    ),
    Case(
        "export-stride-zero",
        "exportchips",
        "STRIDE_X 0",
        _with(EXPORT, STRIDE_X=0),
        "STRIDE_X must be at least 1 (got 0)",
    ),
    Case(
        "export-stride-negative",
        "exportchips",
        "STRIDE_Y −16",
        _with(EXPORT, STRIDE_Y=-16),
        "STRIDE_Y must be at least 1 (got -16)",
    ),
    Case(
        "export-output-not-empty",
        "exportchips",
        "OUTPUT_DIR exists and holds a file",
        _with(EXPORT, OUTPUT_DIR="{out}/taken"),
        f"is not empty. {NEVER}",
        existing={"taken/keep.txt": "mine"},
    ),
    Case(
        "export-existing-index",
        "exportchips",
        "INDEX file exists",
        _with(EXPORT, INDEX="{out}/index.gpkg"),
        f"already exists. {NEVER}",
        existing={"index.gpkg": "mine"},
    ),
    Case(
        "export-unwritable",
        "exportchips",
        "OUTPUT_DIR in an unwritable place (/sys)",
        _with(EXPORT, OUTPUT_DIR=f"{UNWRITABLE}/chips"),
        "OUTPUT_DIR: cannot create folder",
    ),
    Case(
        "export-full-disk",
        "exportchips",
        "disk full while writing chips (RLIMIT_FSIZE 2 KiB)",
        EXPORT,
        f"OUTPUT_DIR: writing failed ([Errno 27] File too large). {FULL}",
        fsize=2048,
    ),
    Case(
        "export-chip-size-huge",
        "exportchips",
        "CHIP_SIZE 100000 (a 100000 × 100000 chip)",
        _with(EXPORT, CHIP_SIZE=100000),
        "CHIP_SIZE: exporting chips of 100000 × 100000 pixels (3 bands) needs about",
    ),
    Case(
        "export-spaces",
        "exportchips",
        "paths with spaces and non-ASCII characters",
        _with(
            EXPORT, INPUT=f"{SPACED}/scène 1.tif", LABELS=f"{SPACED}/étiquettes 1.gpkg", OUTPUT_DIR="{out}/mes chips ø"
        ),
        ok=True,
        result="works",
    ),
    # ------------------------------------------------------------------ train
    Case(
        "train-missing-chip-files",
        "train",
        "chips folder with a chip file deleted",
        _with(TRAIN, CHIPS="{in}/chips_missing"),
        "chip files listed in chips.csv are missing",
    ),
    Case(
        "train-not-a-chips-folder",
        "train",
        "folder without dataset.json",
        _with(TRAIN, CHIPS="{in}/chips_nojson"),
        "has no dataset.json",
    ),
    Case(
        "train-single-class",
        "train",
        "dataset whose training chips hold a single class",
        _with(TRAIN, CHIPS="{in}/chips_single"),
        "only 1 of its classes occurs in the training chips",
    ),
    Case(
        "train-existing-model",
        "train",
        "OUTPUT_MODEL exists",
        TRAIN,
        f"already exists. {NEVER}",
        existing={"m.pt": "mine"},
    ),
    Case(
        "train-unwritable",
        "train",
        "OUTPUT_MODEL in an unwritable place (/sys)",
        _with(TRAIN, OUTPUT_MODEL=f"{UNWRITABLE}.pt"),
        "OUTPUT_MODEL: cannot write in /sys.",
    ),
    Case(
        "train-full-disk",
        "train",
        "disk full while saving the model (RLIMIT_FSIZE 4 KiB)",
        TRAIN,
        f"OUTPUT_MODEL: writing failed ([Errno 27] File too large). {FULL}",
        fsize=4096,
    ),
    # issue 13, family 1: one validator of the whole chips folder, before the first epoch
    Case(
        "train-dataset-json-list",
        "train",
        "dataset.json holding a JSON list",
        _with(TRAIN, CHIPS="{in}/chips_json_list"),
        "CHIPS: dataset.json must hold a JSON object (it holds a JSON list)",
    ),
    Case(
        "train-dataset-no-classes",
        "train",
        "dataset.json without classes",
        _with(TRAIN, CHIPS="{in}/chips_no_classes"),
        "CHIPS: dataset.json has no 'classes' list",
    ),
    Case(
        "train-class-value-300",
        "train",
        "dataset.json listing a class value 300",
        _with(TRAIN, CHIPS="{in}/chips_class_300"),
        "CHIPS: dataset.json class 2 has value 300; class values must be integers 0-254",
    ),
    Case(
        "train-duplicate-class-values",
        "train",
        "dataset.json listing class value 0 twice",
        _with(TRAIN, CHIPS="{in}/chips_dup_class"),
        "CHIPS: dataset.json lists class value 0 twice (classes 1 and 2)",
    ),
    Case(
        "train-class-colour-red",
        "train",
        'dataset.json class colour "red"',
        _with(TRAIN, CHIPS="{in}/chips_colour_red"),
        "CHIPS: dataset.json class 2 (value 1) has color 'red'; colours are written #rrggbb",
    ),
    Case(
        "train-class-empty-name",
        "train",
        "dataset.json class with an empty name",
        _with(TRAIN, CHIPS="{in}/chips_empty_name"),
        "CHIPS: dataset.json class 2 (value 1) needs a non-empty name",
    ),
    Case(
        "train-in-channels-mismatch",
        "train",
        "dataset.json says 4 bands, the chips have 3",
        _with(TRAIN, CHIPS="{in}/chips_in_channels"),
        "has 3 bands, but dataset.json says in_channels 4",
    ),
    Case(
        "train-normalization-length",
        "train",
        "normalisation mean of 2 values for 3 bands",
        _with(TRAIN, CHIPS="{in}/chips_norm_length"),
        "CHIPS: dataset.json normalization mean must list one number per band (3, in_channels), got 2 values",
    ),
    Case(
        "train-constant-band",
        "train",
        "band std 0 (a constant band)",
        _with(TRAIN, CHIPS="{in}/chips_std_zero"),
        "CHIPS: dataset.json normalization std of band 2 is 0: the band is constant in the training chips",
    ),
    Case(
        "train-std-nan",
        "train",
        "band std NaN",
        _with(TRAIN, CHIPS="{in}/chips_std_nan"),
        "CHIPS: dataset.json normalization std of band 1 is nan, not a finite number",
    ),
    Case(
        "train-mixed-chip-sizes",
        "train",
        "one 16-px chip among 32-px chips",
        _with(TRAIN, CHIPS="{in}/chips_mixed_sizes"),
        "is 16 × 16 pixels, but dataset.json says chip_size 32",
    ),
    Case(
        "train-chip-not-raster",
        "train",
        "a chip file that is not a raster",
        _with(TRAIN, CHIPS="{in}/chips_not_raster"),
        "is not a raster GDAL can read",
    ),
    Case(
        "train-chip-band-count",
        "train",
        "one 2-band chip among 3-band chips",
        _with(TRAIN, CHIPS="{in}/chips_two_bands"),
        "has 2 bands, but dataset.json says in_channels 3",
    ),
    Case(
        "train-mask-two-bands",
        "train",
        "a mask with 2 bands",
        _with(TRAIN, CHIPS="{in}/chips_mask_bands"),
        "has 2 bands; a mask must have exactly one band",
    ),
    Case(
        "train-mask-unlisted-class",
        "train",
        "a mask holding class value 9, not in dataset.json",
        _with(TRAIN, CHIPS="{in}/chips_mask_value"),
        "holds class value 9, which dataset.json does not list",
    ),
    Case(
        "train-chips-is-file",
        "train",
        "CHIPS is a file, not a folder",
        _with(TRAIN, CHIPS="{in}/rgb.tif"),
        "is a file; choose the folder written by Export training chips",
    ),
    # issue 13, family 2: chip paths stay inside the chips folder
    Case(
        "train-path-escapes",
        "train",
        "chips.csv row ../../../../etc/passwd",
        _with(TRAIN, CHIPS="{in}/chips_escape"),
        "CHIPS: chips.csv row 1, image: '../../../../etc/passwd' leads outside",
    ),
    Case(
        "train-path-absolute",
        "train",
        "chips.csv row with an absolute path",
        _with(TRAIN, CHIPS="{in}/chips_absolute"),
        "CHIPS: chips.csv row 2, mask: an absolute path",
    ),
    Case(
        "train-path-symlink",
        "train",
        "chip file that is a symbolic link out of the folder",
        _with(TRAIN, CHIPS="{in}/chips_symlink"),
        "CHIPS: chips.csv row 1, image: 'images/",
    ),
    # issue 13, family 3: memory estimated from the parameters before allocating
    Case(
        "train-huge-model",
        "train",
        'MODEL_OPTIONS {"base_width": 1000000}',
        _with(TRAIN, MODEL_OPTIONS=json.dumps({"base_width": 1000000})),
        "MODEL_OPTIONS: training this unet on 32-pixel chips, even at batch size 1, needs about",
    ),
    Case(
        "train-spaces",
        "train",
        "paths with spaces and non-ASCII characters",
        _with(TRAIN, CHIPS=f"{SPACED}/chips ø", OUTPUT_MODEL="{out}/modèle ø 1.pt"),
        ok=True,
        result="works",
    ),
    # ------------------------------------------------------------------ segment
    Case(
        "segment-one-band",
        "segment",
        "1-band raster, 3-band model",
        _with(SEGMENT, INPUT="{in}/one_band.tif"),
        "INPUT has 1 band, but the model was trained on 3",
    ),
    Case(
        "segment-twelve-bands",
        "segment",
        "12-band raster, 3-band model",
        _with(SEGMENT, INPUT="{in}/twelve.tif"),
        "INPUT has 12 bands, but the model was trained on 3",
    ),
    # issue 17 (resampling): a degree raster is read on the model's grid; what cannot be planned is refused
    Case(
        "segment-degree-raster",
        "segment",
        "geographic (degree) raster, model trained in UTM at 2 m",
        _with(SEGMENT, INPUT="{in}/geo.tif"),
        ok=True,
        result="works: read through a warped VRT at 2 m in EPSG:32633, class map on the raster's degree grid",
    ),
    Case(
        "segment-pixel-size-missing",
        "segment",
        "RESOLUTION 2 (PIXEL_SIZE) without a pixel size",
        _with(SEGMENT, RESOLUTION=2),
        "PIXEL_SIZE must be above 0 (map units of the working CRS) when RESOLUTION is 2 (got 0)",
    ),
    Case(
        "segment-no-crs-card-crs",
        "segment",
        "raster without a CRS, model card with one (RESOLUTION auto)",
        _with(SEGMENT, INPUT="{in}/nocrs.tif"),
        "INPUT has no CRS, but the model was trained in EPSG:32633; assign the raster its CRS",
    ),
    Case(
        "segment-all-nodata",
        "segment",
        "raster whose every pixel is nodata",
        _with(SEGMENT, INPUT="{in}/nodata.tif"),
        NOTHING,
    ),
    Case(
        "segment-nan-only",
        "segment",
        "Float32 raster holding only NaN",
        _with(SEGMENT, INPUT="{in}/nan_only.tif"),
        NOTHING,
    ),
    Case(
        "segment-nan-hole",
        "segment",
        "Float32 raster with a NaN hole",
        _with(SEGMENT, INPUT="{in}/nan_hole.tif", OUTPUT_PROBABILITIES="{out}/p.tif"),
        ok=True,
        result="works: 255 exactly at the NaN pixels, finite probabilities everywhere else",
    ),
    Case(
        "segment-wrong-output-shape",
        "segment",
        "model returning 5 classes, card listing 3",
        _with(SEGMENT, MODEL="{in}/wrong_shape.onnx"),
        "MODEL: the model returns shape [1, 5, 32, 32]",
    ),
    Case(
        "segment-missing-card",
        "segment",
        "ONNX model without a card",
        _with(SEGMENT, MODEL="{in}/no_card.onnx"),
        "carries no GeoSeg model card",
    ),
    Case(
        "segment-card-not-json",
        "segment",
        "ONNX card that is not JSON",
        _with(SEGMENT, MODEL="{in}/card_not_json.onnx"),
        "is not valid JSON",
    ),
    Case(
        "segment-card-wrong-types",
        "segment",
        'ONNX card with in_channels "3" (a string)',
        _with(SEGMENT, MODEL="{in}/card_wrong_types.onnx"),
        "in_channels must be a positive integer (got '3')",
    ),
    Case(
        "segment-pickle-pt",
        "segment",
        ".pt hiding a pickled object that would create a file",
        _with(SEGMENT, MODEL="{in}/evil.pt"),
        "GeoSeg refuses to load it",
    ),
    Case(
        "segment-nan-model",
        "segment",
        "model returning NaN everywhere",
        _with(SEGMENT, MODEL="{in}/nan_model.onnx", OUTPUT_PROBABILITIES="{out}/p.tif"),
        "MODEL: the model returned NaN or infinite values for every pixel",
    ),
    Case(
        "segment-existing-output",
        "segment",
        "OUTPUT exists",
        SEGMENT,
        f"already exists. {NEVER}",
        existing={"classes.tif": "mine"},
    ),
    Case(
        "segment-crop-too-large",
        "segment",
        "CROP half the chip",
        _with(SEGMENT, CROP=16),
        "CROP must be at least 0 and less than half of CHIP_SIZE 32 (got 16)",
    ),
    Case(
        "segment-stride-too-large",
        "segment",
        "STRIDE_X > CHIP_SIZE − 2·CROP",
        _with(SEGMENT, STRIDE_X=40),
        "STRIDE_X (40) must be between 1 and CHIP_SIZE − 2·CROP",
    ),
    Case(
        "segment-stride-zero",
        "segment",
        "STRIDE_Y 0",
        _with(SEGMENT, STRIDE_Y=0),
        "STRIDE_Y must be at least 1 (got 0)",
    ),
    Case(
        "segment-scheduler-unreachable",
        "segment",
        "SCHEDULER where no Dask scheduler listens (tcp://127.0.0.1:9)",
        _with(SEGMENT, SCHEDULER="tcp://127.0.0.1:9"),
        "SCHEDULER: could not connect to tcp://127.0.0.1:9: Connection refused — start one with",
    ),
    Case(
        "segment-unwritable",
        "segment",
        "OUTPUT in an unwritable place (/sys)",
        _with(SEGMENT, OUTPUT=f"{UNWRITABLE}/classes.tif"),
        "OUTPUT: cannot create folder",
    ),
    Case(
        "segment-full-disk",
        "segment",
        "disk full while writing the maps (RLIMIT_FSIZE 8 KiB)",
        _with(SEGMENT, OUTPUT_PROBABILITIES="{out}/p.tif"),
        f"(_tiffWriteProc:File too large). {FULL}",
        fsize=8192,
    ),
    Case(
        "segment-spaces",
        "segment",
        "paths with spaces and non-ASCII characters (.pt model)",
        _with(
            SEGMENT,
            INPUT=f"{SPACED}/scène 1.tif",
            MODEL=f"{SPACED}/modèle 1.pt",
            OUTPUT="{out}/carte ø/classes é 1.tif",
        ),
        ok=True,
        result="works",
    ),
    # ------------------------------------------------------------------ assess
    Case(
        "assess-size-mismatch",
        "assess",
        "reference 51 × 40, prediction 50 × 40",
        _with(ASSESS, REFERENCE="{in}/ref_size.tif"),
        "REFERENCE is 51 × 40 pixels but PREDICTION is 50 × 40",
    ),
    Case(
        "assess-geotransform-mismatch",
        "assess",
        "reference shifted by one pixel",
        _with(ASSESS, REFERENCE="{in}/ref_shift.tif"),
        "same size but a different geotransform",
    ),
    Case(
        "assess-crs-mismatch",
        "assess",
        "reference in another CRS (UTM 34N)",
        _with(ASSESS, REFERENCE="{in}/ref_crs.tif"),
        "REFERENCE and PREDICTION are in different CRSs",
    ),
    Case(
        "assess-no-class-field",
        "assess",
        "reference polygons, no CLASS_FIELD given",
        _with(ASSESS, REFERENCE=None, REFERENCE_VECTOR="{in}/ref.gpkg"),
        "CLASS_FIELD: give the integer field",
    ),
    Case(
        "assess-missing-class-field",
        "assess",
        "reference polygons without the named class field",
        _with(ASSESS, REFERENCE=None, REFERENCE_VECTOR="{in}/ref.gpkg", CLASS_FIELD="nope"),
        "CLASS_FIELD: the labels have no field 'nope'",
    ),
    Case(
        "assess-point-reference",
        "assess",
        "points as reference",
        _with(ASSESS, REFERENCE=None, REFERENCE_VECTOR="{in}/points.gpkg", CLASS_FIELD="cls"),
        "REFERENCE_VECTOR: the layer holds Point geometries",
    ),
    Case(
        "assess-empty-reference",
        "assess",
        "reference layer without features",
        _with(ASSESS, REFERENCE=None, REFERENCE_VECTOR="{in}/empty.gpkg", CLASS_FIELD="cls"),
        "REFERENCE_VECTOR: the layer has no features",
    ),
    Case(
        "assess-multiband-reference",
        "assess",
        "3-band REFERENCE",
        _with(ASSESS, REFERENCE="{in}/ref_3bands.tif"),
        "REFERENCE has 3 bands; it must be a single-band integer class raster",
    ),
    Case(
        "assess-value-300",
        "assess",
        "prediction holding value 300, absent from the reference",
        _with(ASSESS, PREDICTION="{in}/pred_300.tif"),
        ok=True,
        result="works: the 100 pixels of value 300 count as errors (OA 95 %) and are named in the report",
    ),
    Case(
        "assess-float-prediction",
        "assess",
        "3-band Float32 raster as PREDICTION",
        _with(ASSESS, PREDICTION="{in}/nan_hole.tif"),
        "PREDICTION must be a single-band integer class raster",
    ),
    Case(
        "assess-existing-report",
        "assess",
        "OUTPUT_REPORT exists",
        ASSESS,
        f"already exists. {NEVER}",
        existing={"report.json": "mine"},
    ),
    Case(
        "assess-unwritable",
        "assess",
        "OUTPUT_REPORT in an unwritable place (/sys)",
        _with(ASSESS, OUTPUT_REPORT=f"{UNWRITABLE}/report.json"),
        "OUTPUT_REPORT: cannot create folder",
    ),
    Case(
        "assess-full-disk",
        "assess",
        "disk full while writing the report (RLIMIT_FSIZE 512 B)",
        ASSESS,
        f"OUTPUT_REPORT: writing failed ([Errno 27] File too large). {FULL}",
        fsize=512,
    ),
    Case(
        "assess-spaces",
        "assess",
        "paths with spaces and non-ASCII characters",
        _with(
            ASSESS,
            PREDICTION=f"{SPACED}/prédiction 1.tif",
            REFERENCE=f"{SPACED}/référence 1.tif",
            OUTPUT_REPORT="{out}/rapport ø/rapport é 1.html",
        ),
        ok=True,
        result="works",
    ),
    # ------------------------------------------------------------------ exportonnx
    Case(
        "exportonnx-pickle-pt",
        "exportonnx",
        ".pt hiding a pickled object that would create a file",
        _with(ONNX, MODEL="{in}/evil.pt"),
        "GeoSeg refuses to load it",
    ),
    Case(
        "exportonnx-card-not-json",
        "exportonnx",
        ".pt whose card is not JSON",
        _with(ONNX, MODEL="{in}/card_not_json.pt"),
        "has no readable model card",
    ),
    Case(
        "exportonnx-card-wrong-types",
        "exportonnx",
        '.pt whose card has chip_size "32" (a string)',
        _with(ONNX, MODEL="{in}/card_wrong_types.pt"),
        "chip_size must be an integer",
    ),
    Case(
        "exportonnx-existing-output",
        "exportonnx",
        "OUTPUT exists",
        ONNX,
        f"already exists. {NEVER}",
        existing={"m.onnx": "mine"},
    ),
    Case(
        "exportonnx-spaces",
        "exportonnx",
        "paths with spaces and non-ASCII characters",
        _with(ONNX, MODEL=f"{SPACED}/modèle 1.pt", OUTPUT="{out}/modèle ø 1.onnx"),
        ok=True,
        result="works",
    ),
    # ------------------------------------------------------------------ issue 13, the rest
    # family 1: a virtual raster whose source file is gone (GDAL opens sources only when it reads)
    Case(
        "export-vrt-missing-source",
        "exportchips",
        "VRT whose source file is missing",
        _with(EXPORT, INPUT="{in}/missing_source.vrt"),
        "INPUT: the virtual raster",
    ),
    Case(
        "segment-vrt-missing-source",
        "segment",
        "VRT whose source file is missing",
        _with(SEGMENT, INPUT="{in}/missing_source.vrt"),
        "INPUT: the virtual raster",
    ),
    Case(
        "assess-vrt-missing-source",
        "assess",
        "PREDICTION a VRT whose source file is missing",
        _with(ASSESS, PREDICTION="{in}/missing_pred.vrt"),
        "PREDICTION: the virtual raster",
    ),
    # family 1: MODEL_OPTIONS encoder_weights
    Case(
        "train-encoder-weights-missing",
        "train",
        "MODEL_OPTIONS encoder_weights: a file that does not exist",
        _with(TRAIN, ARCHITECTURE=2, MODEL_OPTIONS=json.dumps({"encoder_weights": "{in}/no_such_weights.pth"})),
        "MODEL_OPTIONS: encoder_weights file not found:",
    ),
    Case(
        "train-encoder-weights-pickle-pt",
        "train",
        "MODEL_OPTIONS encoder_weights: a torch file hiding a pickled object that would create a file",
        _with(
            TRAIN,
            ARCHITECTURE=2,
            MODEL_OPTIONS=json.dumps({"encoder_weights": "{in}/evil_weights.pth", "decoder_channels": 8}),
        ),
        "holds Python objects other than plain weights, which could run code when loaded; GeoSeg refuses to load it",
    ),
    Case(
        "train-encoder-weights-raster",
        "train",
        "MODEL_OPTIONS encoder_weights: a GeoTIFF",
        _with(TRAIN, ARCHITECTURE=2, MODEL_OPTIONS=json.dumps({"encoder_weights": "{in}/rgb.tif"})),
        "is not a readable PyTorch weights file",
    ),
    # family 1: exportonnx writes into a folder that does not exist yet, like every other step
    Case(
        "exportonnx-missing-folder",
        "exportonnx",
        "OUTPUT in folders that do not exist",
        _with(ONNX, OUTPUT="{out}/new/folder/m.onnx"),
        ok=True,
        result="works: the folders are created (as train and segment do)",
    ),
    Case(
        "exportonnx-output-folder",
        "exportonnx",
        "OUTPUT names an existing folder",
        _with(ONNX, OUTPUT="{out}/taken.onnx"),
        "is a folder; give the .onnx file to write",
        existing={"taken.onnx/keep.txt": "mine"},
    ),
    # family 4: the model card is built from dataset.json and validated before the first epoch
    Case(
        "train-card-background-300",
        "train",
        "dataset.json background 300 (trains, but no card could hold it)",
        _with(TRAIN, CHIPS="{in}/chips_card_background"),
        "CHIPS: dataset.json describes the data in a way GeoSeg cannot put in a model card (card field background "
        "must be an integer 0–254 or null (got 300))",
    ),
    Case(
        "train-card-pixel-size",
        "train",
        "dataset.json pixel size −2",
        _with(TRAIN, CHIPS="{in}/chips_card_pixel_size"),
        "card field pixel_size[0] must be a finite number > 0 (got -2.0)",
    ),
    Case(
        "train-card-crs-text",
        "train",
        'dataset.json crs "EPSG:32633" (text, not an object)',
        _with(TRAIN, CHIPS="{in}/chips_card_crs"),
        "card field crs must be an object or null (got 'EPSG:32633')",
    ),
    Case(
        "train-card-band-zero",
        "train",
        "dataset.json bands [0, 1, 2]",
        _with(TRAIN, CHIPS="{in}/chips_card_bands"),
        "card field bands[0] must be a positive integer (got 0)",
    ),
    # family 5: what a killed run leaves
    Case(
        "train-rerun-after-kill",
        "train",
        "plain re-run where an interrupted run left its state (.last.pt)",
        TRAIN,
        "Set RESUME to continue that run",
        existing={"m.last.pt": "state of a killed run"},
    ),
    Case(
        "segment-stale-partial",
        "segment",
        "a partial file of OUTPUT left by a killed run",
        SEGMENT,
        ok=True,
        result="works: the stale partial file is removed",
        existing={".classes.tif.partial-k1ll3d.tif": "half a GeoTIFF"},
    ),
    Case(
        "export-stale-partial",
        "exportchips",
        "a partial folder of OUTPUT_DIR left by a killed run",
        EXPORT,
        ok=True,
        result="works: the stale partial folder is removed",
        existing={".chips.partial-k1ll3d/images/chip.tif": "half a chip"},
    ),
    # weak messages
    Case(
        "segment-model-is-folder",
        "segment",
        "MODEL is a folder",
        _with(SEGMENT, MODEL="{in}/chips"),
        "/chips is a folder; give a",
    ),
    Case(
        "exportonnx-model-is-folder",
        "exportonnx",
        "MODEL is a folder",
        _with(ONNX, MODEL="{in}/chips"),
        "/chips is a folder; give a",
    ),
    Case(
        "export-chip-size-text",
        "exportchips",
        'CHIP_SIZE "abc"',
        _with(EXPORT, CHIP_SIZE="abc"),
        "CHIP_SIZE must be a whole number (got 'abc', which is not a number)",
    ),
    Case(
        "train-learning-rate-text",
        "train",
        'LEARNING_RATE "fast"',
        _with(TRAIN, LEARNING_RATE="fast"),
        "LEARNING_RATE must be a number (got 'fast', which is not a number)",
    ),
    Case(
        "segment-chip-size-fixed-model",
        "segment",
        "CHIP_SIZE 48 for a model exported for 32-pixel tiles only",
        _with(SEGMENT, MODEL="{in}/fixed32.onnx", CHIP_SIZE=48),
        "CHIP_SIZE 48: the model accepts only tiles of its card's chip size 32",
    ),
    Case(
        "segment-fixed-model-expected",
        "segment",
        "CHIP_SIZE 48 for a fixed-size model: onnxruntime's own words kept",
        _with(SEGMENT, MODEL="{in}/fixed32.onnx", CHIP_SIZE=48),
        "Expected: 32",
    ),
    # ------------------------------------------------------------------ issue 14: Deepness and bare ONNX models
    Case(
        "segment-bare-onnx-no-card",
        "segment",
        "ONNX model with neither a GeoSeg card nor Deepness metadata, no CARD",
        _with(SEGMENT, MODEL="{in}/bare.onnx"),
        "and no Deepness metadata; give CARD a JSON file with the card fields (classes, bands, in_channels",
    ),
    Case(
        "segment-bare-onnx-card",
        "segment",
        "the same bare ONNX model with CARD=card.json",
        _with(SEGMENT, MODEL="{in}/bare.onnx", CARD="{in}/card_good.json"),
        ok=True,
        result="works: the class map uses the CARD file's classes",
    ),
    Case(
        "segment-card-missing",
        "segment",
        "CARD naming a file that does not exist",
        _with(SEGMENT, MODEL="{in}/bare.onnx", CARD="{in}/no_such_card.json"),
        "CARD: file not found",
    ),
    Case(
        "segment-card-invalid",
        "segment",
        "CARD file with an empty class list and no normalization",
        _with(SEGMENT, MODEL="{in}/bare.onnx", CARD="{in}/card_bad.json"),
        "CARD: card field classes must be a list of at least 2 objects",
    ),
    Case(
        "segment-deepness-names-not-json",
        "segment",
        "Deepness model whose class_names is not JSON",
        _with(SEGMENT, INPUT="{in}/rgba.tif", MODEL="{in}/dn_names_not_json.onnx"),
        "MODEL: Deepness metadata class_names is not JSON",
    ),
    Case(
        "segment-deepness-names-list",
        "segment",
        "Deepness model whose class_names is a list of names",
        _with(SEGMENT, INPUT="{in}/rgba.tif", MODEL="{in}/dn_names_list.onnx"),
        "MODEL: Deepness metadata class_names must be an object",
    ),
    Case(
        "segment-deepness-detector",
        "segment",
        "Deepness detection model (model_type Detector)",
        _with(SEGMENT, INPUT="{in}/rgba.tif", MODEL="{in}/dn_detector.onnx"),
        "the model is a Deepness 'Detector' model",
    ),
    Case(
        "segment-deepness-std-text",
        "segment",
        "Deepness model whose standardization_std is a word",
        _with(SEGMENT, INPUT="{in}/rgba.tif", MODEL="{in}/dn_std_text.onnx"),
        "MODEL: Deepness metadata standardization_std must be a list of 3 numbers",
    ),
    Case(
        "segment-deepness-chip-size",
        "segment",
        "CHIP_SIZE 64 for a Deepness model fixed at 32 × 32",
        _with(SEGMENT, INPUT="{in}/rgba.tif", MODEL="{in}/deepness.onnx", CHIP_SIZE=64),
        "CHIP_SIZE 64: the model's input is fixed at 32 × 32 pixels",
    ),
    Case(
        "segment-output-index-range",
        "segment",
        "OUTPUT_INDEX 5 for a model with 2 outputs",
        _with(SEGMENT, INPUT="{in}/rgba.tif", MODEL="{in}/deepness.onnx", OUTPUT_INDEX=5),
        "OUTPUT_INDEX 5: the model has 2 output(s)",
    ),
    Case(
        "segment-threshold-without-seg-thresh",
        "segment",
        "MODEL_THRESHOLD for a model without seg_thresh",
        _with(SEGMENT, MODEL="{in}/model.onnx", MODEL_THRESHOLD=True),
        "MODEL_THRESHOLD: the model has no probability threshold",
    ),
    Case(
        "segment-card-for-pt",
        "segment",
        "CARD given with a GeoSeg .pt model",
        _with(SEGMENT, MODEL="{in}/model.pt", CARD="{in}/card_good.json"),
        "CARD: a GeoSeg .pt carries its own card",
    ),
    # ------------------------------------------------------------------ issue 16: label rasters, MASK, APPEND
    Case(
        "export-labels-both",
        "exportchips",
        "both LABELS and LABEL_RASTER",
        _with(EXPORT, LABEL_RASTER="{in}/lab_ok.tif"),
        "LABELS: give the labels either as polygons (LABELS) or as a classified raster (LABEL_RASTER), not both",
    ),
    Case(
        "export-labels-neither",
        "exportchips",
        "neither LABELS nor LABEL_RASTER",
        _with(EXPORT, LABELS=None, CLASS_FIELD=None),
        "and none was given",
    ),
    Case(
        "export-label-raster-float",
        "exportchips",
        "Float32 label raster",
        _with(EXPORT, LABELS=None, CLASS_FIELD=None, LABEL_RASTER="{in}/lab_float.tif"),
        "lab_float.tif is of type Float32; a label raster holds integer class values",
    ),
    Case(
        "export-label-raster-300",
        "exportchips",
        "label raster holding the value 300",
        _with(EXPORT, LABELS=None, CLASS_FIELD=None, LABEL_RASTER="{in}/lab_300.tif"),
        "LABEL_RASTER: value 300 at INPUT pixel (column 30, row 20)",
    ),
    Case(
        "export-label-raster-two-bands",
        "exportchips",
        "label raster with two bands",
        _with(EXPORT, LABELS=None, CLASS_FIELD=None, LABEL_RASTER="{in}/lab_two.tif"),
        "has 2 bands; a label raster has exactly one band",
    ),
    Case(
        "export-mask-points",
        "exportchips",
        "MASK layer of points",
        _with(EXPORT, MASK="{in}/points.gpkg"),
        "MASK: the layer holds Point geometries; MASK layers must hold polygons",
    ),
    Case(
        "export-mask-far",
        "exportchips",
        "MASK not overlapping the raster",
        _with(EXPORT, MASK="{in}/aoi_far.gpkg"),
        "MASK does not overlap INPUT",
    ),
    Case(
        "export-append-not-chips",
        "exportchips",
        "APPEND to a folder that is not a GeoSeg chips folder",
        _with(EXPORT, OUTPUT_DIR="{in}/not_chips", APPEND=True),
        "is not a GeoSeg chips folder (no dataset.json)",
    ),
    Case(
        "export-append-bands",
        "exportchips",
        "APPEND a 1-band scene to 3-band chips",
        _with(EXPORT, INPUT="{in}/one_band.tif", OUTPUT_DIR="{in}/chips", APPEND=True),
        "INPUT: the raster has 1 bands, but the chips folder's images have 3",
    ),
    Case(
        "export-append-dtype",
        "exportchips",
        "APPEND a UInt16 scene to Byte chips",
        _with(EXPORT, INPUT="{in}/rgb16.tif", OUTPUT_DIR="{in}/chips", APPEND=True),
        "INPUT: the raster's data type is UInt16, but the chips folder's images are Byte",
    ),
    Case(
        "export-append-classes",
        "exportchips",
        "APPEND a scene with a class the chips folder lacks",
        _with(EXPORT, LABELS="{in}/labels7.gpkg", OUTPUT_DIR="{in}/chips", APPEND=True),
        "LABELS: class value 7 of the new scene is not among the chips folder's classes",
    ),
    # ------------------------------------------------------------------ issue 16: chip formats (CHIP_FORMAT)
    Case(
        "export-png-16bit",
        "exportchips",
        "PNG chips (CHIP_FORMAT=1) of a UInt16 raster",
        _with(EXPORT, INPUT="{in}/rgb16.tif", CHIP_FORMAT=1),
        "CHIP_FORMAT: PNG chips need 8-bit (Byte) data of 1-4 bands, but the raster has 3 bands of UInt16",
    ),
    # ------------------------------------------------------------------ issue 17: polygons, SIEVE, TTA
    Case(
        "segment-vector-not-gpkg",
        "segment",
        "OUTPUT_VECTOR not a GeoPackage (.shp)",
        _with(SEGMENT, OUTPUT_VECTOR="{out}/regions.shp"),
        "OUTPUT_VECTOR must be a GeoPackage file name ending in .gpkg",
    ),
    Case(
        "segment-vector-existing",
        "segment",
        "OUTPUT_VECTOR exists",
        _with(SEGMENT, OUTPUT_VECTOR="{out}/regions.gpkg"),
        f"already exists. {NEVER}",
        existing={"regions.gpkg": "mine"},
    ),
    Case(
        "segment-sieve-negative",
        "segment",
        "SIEVE −3",
        _with(SEGMENT, SIEVE=-3),
        "SIEVE must be at least 0 (got -3)",
    ),
    Case(
        "segment-tta-out-of-range",
        "segment",
        "TTA 3 (choices 0-2)",
        _with(SEGMENT, TTA=3),
        "TTA",
    ),
    Case(
        "segment-polygons-sieve-tta",
        "segment",
        "OUTPUT_VECTOR with SIEVE 4 and TTA 2",
        _with(SEGMENT, OUTPUT_VECTOR="{out}/regions.gpkg", SIEVE=4, TTA=2),
        ok=True,
        result="works: sieved class map and its polygons (value, name, area in m²), 8 views per tile",
    ),
    # ------------------------------------------------------------------ issue 15: pretrained encoders
    # (a wrong checksum, a dropped connection and offline need a local server and its environment:
    # tests/core/test_core_weights.py and tests/e2e/test_alg_pretrained.py)
    Case(
        "train-weights-unknown-name",
        "train",
        "ENCODER_WEIGHTS naming no known weights",
        _with(TRAIN, ENCODER=2, ENCODER_WEIGHTS="resnet34_imagenett"),
        "ENCODER_WEIGHTS: unknown weight name 'resnet34_imagenett'",
    ),
    Case(
        "train-weights-other-resnet",
        "train",
        "ResNet-50 weights for a ResNet-34 encoder",
        _with(TRAIN, ENCODER=2, ENCODER_WEIGHTS="resnet50_imagenet"),
        "ENCODER_WEIGHTS: resnet50_imagenet are resnet50 weights, but the encoder is resnet34",
    ),
    Case(
        "train-weights-missing-file",
        "train",
        "ENCODER_WEIGHTS file that does not exist",
        _with(TRAIN, ENCODER=1, ENCODER_WEIGHTS="{in}/no_such_resnet18.pth"),
        "ENCODER_WEIGHTS: file not found",
    ),
    Case(
        "train-weights-plain-unet",
        "train",
        "ENCODER_WEIGHTS for the plain UNet (no ENCODER)",
        _with(TRAIN, ENCODER_WEIGHTS="resnet18_imagenet"),
        "ENCODER_WEIGHTS: the plain unet has no pretrained encoder",
    ),
    Case(
        "train-encoder-fcn",
        "train",
        "ENCODER with FCN",
        _with(TRAIN, ARCHITECTURE=3, ENCODER=1, MODEL_OPTIONS=json.dumps({"base_width": 4})),
        "ENCODER: fcn has no ResNet encoder option",
    ),
    Case(
        "train-freeze-random-encoder",
        "train",
        "FREEZE_ENCODER_EPOCHS without pretrained weights",
        _with(TRAIN, ENCODER=1, FREEZE_ENCODER_EPOCHS=1),
        "FREEZE_ENCODER_EPOCHS: there are no pretrained encoder weights to keep",
    ),
]

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "case ids must be unique"


def render_markdown() -> str:
    """docs/bad_inputs.md, from CASES."""
    n_bad = sum(not c.ok for c in CASES)
    lines = [
        "# What GeoSeg refuses, and why",
        "",
        "<!-- Generated from tests/support/bad_input_cases.py by `.venv/bin/python tests/support/bad_input_cases.py`;",
        "     tests/e2e/test_bad_inputs.py fails when this file is out of date. -->",
        "",
        "Every row is run by `tests/e2e/test_bad_inputs.py` twice: in QGIS through `processing.run`, and through",
        "`scripts/qgis_process`. For the "
        f"{n_bad} bad inputs the test checks, both ways, that the run stops with the message quoted "
        "below (one line, no traceback), that `qgis_process` exits non-zero, that no output or temporary file "
        "is left behind (an existing file stays byte-identical) and that the input files are untouched "
        "(no `.aux.xml` either). The positive controls must work and write correct output.",
        "",
        "Policies:",
        "",
        "- **Overwriting:** GeoSeg never overwrites. An existing output file or a non-empty output folder is "
        "refused, and left as it was.",
        "- **Nothing half-written:** outputs are written under hidden temporary names and renamed when "
        "complete; any error, a full disk included, removes them.",
        "- **Nodata and NaN:** NaN in a float raster is nodata, like a band's nodata value or a masked pixel. "
        "It never reaches chips statistics, training or predictions. A raster with no valid pixel at all is "
        "refused.",
        "- **Degree rasters:** chip export works in any CRS. Segment reads a geographic (degree) raster on the "
        "model's grid (its card's CRS and pixel size, else the raster's UTM zone) and writes the class map back "
        "on the raster's grid; a raster without a CRS is refused when the model card has one (RESOLUTION 1 "
        "segments it as it is).",
        "- **Untrusted models:** `.pt` files are never unpickled; cards are validated field by field.",
        "- **Validation before work:** the chips folder and the model card training will write are checked "
        "before the first epoch; a refused run leaves no file and no folder.",
        "- **Killed runs:** SIGTERM (and Ctrl+C on the command line) stops `python -m geoseg.core` and "
        "`qgis_process` runs like Cancel: partial files are removed, the exit status is non-zero, and training "
        "keeps its last complete state for RESUME. SIGKILL cannot be caught: the next run of the same outputs "
        "removes the partial files the killed one left.",
        "",
        "| case | algorithm | input | message (excerpt) | result |",
        "|---|---|---|---|---|",
    ]
    for c in CASES:
        msg = "—" if c.ok else f"`{c.message}`"
        result = c.result if c.ok else "refused: exit 1, nothing written, inputs untouched"
        if not c.ok and c.existing:
            result += ", existing output byte-identical"
        if c.id.endswith("pickle-pt"):
            result += ", the payload never runs"
        lines.append(f"| {c.id} | geoseg:{c.alg} | {c.what} | {msg.replace('|', '∣')} | {result} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(DOCS, "w", encoding="utf-8") as f:
        f.write(render_markdown())
    print(f"wrote {DOCS} ({len(CASES)} cases)")
