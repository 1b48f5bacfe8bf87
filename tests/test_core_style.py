"""The design's shape: a pure engine, and one version everywhere."""

from __future__ import annotations

import ast
import configparser
import os

import geoseg.core

from helpers import REPO


def test_core_and_models_import_no_qgis():
    offenders = []
    for pkg in ("core", "models"):
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(root, f)
                tree = ast.parse(open(path, encoding="utf-8").read())
                for node in ast.walk(tree):
                    names = []
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        names = [node.module]
                    banned = ("qgis", "processing", "PyQt5")
                    offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in banned]
    assert offenders == []


def test_version_matches_metadata():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "metadata.txt"))
    assert cfg["general"]["version"] == geoseg.core.__version__
    assert cfg["general"]["qgisMinimumVersion"] == "3.22"
    assert cfg["general"]["hasProcessingProvider"] == "yes"
