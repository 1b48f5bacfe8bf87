"""Shared fixtures. QGIS is imported only by fixtures that need it, so the pure-core run
(`pytest -p no:pytest_qgis -m core`) never loads it."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")  # QGIS must not write .aux.xml beside inputs


def pytest_collection_modifyitems(config, items):
    """Files named test_core_*.py are pure-engine tests: mark them `core`."""
    for item in items:
        if os.path.basename(str(item.fspath)).startswith("test_core_"):
            item.add_marker(pytest.mark.core)


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
    iface.__dict__.setdefault("custom_layer_actions", [])
