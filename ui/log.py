"""The `geoseg` logger, forwarded to QgsMessageLog under a "GeoSeg" tab while the plugin runs."""

from __future__ import annotations

import logging

from qgis.core import Qgis, QgsMessageLog

TAG = "GeoSeg"
LEVELS = {
    logging.DEBUG: Qgis.Info,
    logging.INFO: Qgis.Info,
    logging.WARNING: Qgis.Warning,
    logging.ERROR: Qgis.Critical,
    logging.CRITICAL: Qgis.Critical,
}


class MessageLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = LEVELS.get(record.levelno, Qgis.Info)
        QgsMessageLog.logMessage(self.format(record), TAG, level, notifyUser=False)


def install() -> MessageLogHandler:
    handler = MessageLogHandler(logging.INFO)
    log = logging.getLogger("geoseg")
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def uninstall(handler: MessageLogHandler | None) -> None:
    if handler is not None:
        logging.getLogger("geoseg").removeHandler(handler)
