"""The `geoseg` Processing provider; lists the algorithm classes."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .assess import AssessAlgorithm
from .exportchips import ExportChipsAlgorithm
from .exportonnx import ExportOnnxAlgorithm
from .segment import SegmentAlgorithm
from .train import TrainAlgorithm

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icons", "geoseg.svg")
ALGORITHMS = (ExportChipsAlgorithm, TrainAlgorithm, SegmentAlgorithm, AssessAlgorithm, ExportOnnxAlgorithm)


class GeoSegProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "geoseg"

    def name(self) -> str:
        return "GeoSeg"

    def longName(self) -> str:
        return "GeoSeg deep-learning segmentation"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
