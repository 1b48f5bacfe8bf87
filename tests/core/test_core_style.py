"""One version everywhere. (The pure engine's imports are checked by test_architecture.py.)"""

from __future__ import annotations

import configparser
import os

import geoseg.core
from tests.support.helpers import REPO


def test_version_matches_metadata():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "metadata.txt"))
    assert cfg["general"]["version"] == geoseg.core.__version__
    assert cfg["general"]["qgisMinimumVersion"] == "3.22"
    assert cfg["general"]["hasProcessingProvider"] == "yes"
