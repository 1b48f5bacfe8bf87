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
