"""Shared fixtures. QGIS is imported only by fixtures that need it, so the pure-core run
(`pytest -p no:pytest_qgis -m core`) never loads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GDAL_PAM_ENABLED", "NO")  # QGIS must not write .aux.xml beside inputs


GROUPS = ("core", "qgis", "e2e")  # tests/<group>/…: the folder is the marker (see tests/README.md)


def pytest_collection_modifyitems(config, items):
    """Mark every test with its folder under tests/: `core`, `qgis` or `e2e`."""
    here = Path(__file__).parent
    for item in items:
        group = item.path.relative_to(here).parts[0]
        if group in GROUPS:
            item.add_marker(getattr(pytest.mark, group))


@pytest.fixture
def geoseg_provider(qgis_app, qgis_processing):
    """The GeoSeg provider registered in the test QGIS, as the plugin would (re-registered
    when a plugin load/unload test has removed it)."""
    from qgis.core import QgsApplication

    from geoseg.algorithms.provider import GeoSegProvider

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("geoseg")
    if provider is None:
        provider = GeoSegProvider()
        registry.addProvider(provider)
        _KEEP.append(provider)  # as the plugin does: the Python wrapper must outlive the test
    return provider


_KEEP: list = []


@pytest.fixture(autouse=True)
def _layer_actions_on_stub_iface(request):
    """pytest-qgis's stub iface lacks QGIS's addCustomActionForLayerType/removeCustomActionForLayerType
    (the layer tree's context-menu actions). Tests using `qgis_iface` get both on the stub class,
    recording the registrations in `qgis_iface.custom_layer_actions` as (action, menu, layer_type,
    all_layers). Only the stub iface is patched; QGIS itself stays real."""
    if "qgis_iface" not in request.fixturenames:
        return
    iface = request.getfixturevalue("qgis_iface")
    stub = type(iface)
    if not hasattr(stub, "addCustomActionForLayerType"):

        def add(self, action, menu, layer_type, all_layers):
            self.__dict__.setdefault("custom_layer_actions", []).append((action, menu, layer_type, all_layers))

        def remove(self, action):
            actions = self.__dict__.setdefault("custom_layer_actions", [])
            actions[:] = [entry for entry in actions if entry[0] is not action]
            return True

        stub.addCustomActionForLayerType = add
        stub.removeCustomActionForLayerType = remove
    if not hasattr(stub, "registerOptionsWidgetFactory"):  # Settings ▸ Options pages, recorded likewise
        stub.registerOptionsWidgetFactory = lambda self, f: self.__dict__.setdefault("options_factories", []).append(f)
        stub.unregisterOptionsWidgetFactory = lambda self, f: self.__dict__.setdefault("options_factories", []).remove(
            f
        )
    iface.__dict__.setdefault("custom_layer_actions", [])
    iface.__dict__.setdefault("options_factories", [])


# ---------------------------------------------------------------- segment dialog and actions
@pytest.fixture(scope="module")
def net():
    """A tiny network (receptive-field radius 1) for the segment dialog tests."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory, net) -> str:
    """`net` as an ONNX model carrying a valid GeoSeg card (segment_fixtures.card)."""
    import json

    from geoseg.core.card import CARD_KEY
    from geoseg.models.export import export_onnx
    from tests.support.segment_fixtures import card

    path = str(tmp_path_factory.mktemp("model") / "tiny.onnx")
    export_onnx(net, 3, path, sample_size=32, metadata={CARD_KEY: json.dumps(card())})
    return path


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> dict[str, str]:
    """Byte rasters: one like the training data, and ones differing in pixel size, bands or CRS."""
    from osgeo import gdal

    from tests.support.helpers import make_raster

    folder = tmp_path_factory.mktemp("rasters")
    specs = {"match": {}, "coarse": {"pixel": 10.0}, "fourband": {"bands": 4}, "utm34": {"epsg": 32634}}
    out = {}
    for name, spec in specs.items():
        out[name] = str(folder / f"{name}.tif")
        make_raster(out[name], 70, 50, **{"bands": 3, "dtype": gdal.GDT_Byte, "nodata": None, **spec})
    return out


@pytest.fixture()
def layers(rasters, qgis_iface):
    """The rasters as layers of the project (removed afterwards, with whatever a run added)."""
    from qgis.core import QgsProject, QgsRasterLayer

    project = QgsProject.instance()
    before = set(project.mapLayers())
    added = {name: QgsRasterLayer(path, name, "gdal") for name, path in rasters.items()}
    for layer in added.values():
        assert layer.isValid()
        project.addMapLayer(layer)
    yield added
    project.removeMapLayers([i for i in project.mapLayers() if i not in before])


@pytest.fixture()
def segment_dialog(qgis_app, qgis_iface, layers):
    """A SegmentDialog with fresh settings."""
    from geoseg.ui.segment_dialog import SETTINGS_PREFIX, SegmentDialog
    from tests.support.helpers import fresh_settings, open_dialog

    with fresh_settings(SETTINGS_PREFIX), open_dialog(SegmentDialog, qgis_app, qgis_iface) as dlg:
        yield dlg
