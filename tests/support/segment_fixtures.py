"""What the segment dialog and plugin-action tests share besides fixtures (those are in
conftest.py): the tiny model's card and a helper that fills in the dialog."""

from __future__ import annotations

from tests.support.helpers import UTM, srs

CLASSES = [
    {"value": 0, "name": "background", "color": "#000000"},
    {"value": 2, "name": "water", "color": "#1f77b4"},
    {"value": 7, "name": "forest", "color": "#2ca02c"},
]
MEAN, STD = [120.0, 125.0, 130.0], [60.0, 55.0, 50.0]


def card() -> dict:
    return {
        "classes": CLASSES,
        "bands": [1, 2, 3],
        "in_channels": 3,
        "chip_size": 32,
        "normalization": {"mean": MEAN, "std": STD},
        "architecture": "custom",
        "pixel_size": [2.0, 2.0],
        "crs": {"authid": "EPSG:32633", "wkt": srs(UTM).ExportToWkt()},
        "recommended": {"crop": 4, "stride": 24, "receptive_field_radius": 2},
        "metrics": {"val_miou": 0.8123},
    }


def setup(dlg, layer, model: str, output) -> None:
    """Raster layer, model and output file of a SegmentDialog."""
    dlg.set_input_layer(layer)
    dlg.modelFile.setFilePath(model)
    dlg.outputFile.setFilePath(str(output))
