"""A small model-card editor for an ONNX model that has neither a GeoSeg card nor Deepness metadata
(issue 14): classes (value, name, colour), bands, normalisation mean/std per band and chip size.

Thin over core: the form becomes a card dict, core.card.ModelCard.from_dict validates it (its messages
name the wrong field) and core.foreign checks it against the model's input; the dialog only collects
values and writes the JSON that the CARD parameter then names. Prefilled from core.foreign.example_card
(the model's input channels, output channels and fixed tile size where the graph gives them).
"""

from __future__ import annotations

import json
import os
from typing import Any

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import GeoSegError
from .base_dialog import ERROR_STYLE

COLUMNS = ("Value", "Name", "Colour (#rrggbb)")


def _numbers(text: str, field: str, kind: type = float) -> list[Any]:
    """'1, 2, 3' (commas or spaces) as numbers; GeoSegError naming the card field otherwise."""
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(kind(part))
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise GeoSegError(f"CARD: {field}: '{part}' is not {what}.", param="CARD") from None
    return out


class CardEditor(QDialog):
    """Edit, validate and save a card for `model_path`; `saved_path` holds the written file after Save."""

    def __init__(self, model_path: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("cardEditor")
        self.setWindowTitle("GeoSeg — model card")
        self.model_path = model_path
        self.saved_path: str | None = None
        self.channels: int | None = None  # the model's input channels, when its graph gives them
        root = QVBoxLayout(self)
        intro = QLabel(
            f"{os.path.basename(model_path)} carries no model card. Describe its output classes and the "
            "input it expects; the card is saved as JSON and used as the CARD file."
        )
        intro.setWordWrap(True)
        root.addWidget(intro)
        self.classesTable = QTableWidget(0, len(COLUMNS), self)
        self.classesTable.setObjectName("classesTable")
        self.classesTable.setHorizontalHeaderLabels(list(COLUMNS))
        self.classesTable.setToolTip("One row per model output channel, in channel order: class value, name, colour.")
        root.addWidget(self.classesTable)
        row = QHBoxLayout()
        self.addClassButton = QPushButton("Add class", self)
        self.addClassButton.setObjectName("addClassButton")
        self.removeClassButton = QPushButton("Remove class", self)
        self.removeClassButton.setObjectName("removeClassButton")
        row.addWidget(self.addClassButton)
        row.addWidget(self.removeClassButton)
        row.addStretch(1)
        root.addLayout(row)
        form = QFormLayout()
        root.addLayout(form)
        self.bandsEdit = self._line(form, "Bands", "bandsEdit", "Raster band numbers fed to the model, e.g. 1, 2, 3.")
        self.meanEdit = self._line(form, "Mean per band", "meanEdit", "Normalisation mean of each band, raw units.")
        self.stdEdit = self._line(form, "Std per band", "stdEdit", "Normalisation std of each band, raw units (> 0).")
        self.chipSize = QSpinBox(self)
        self.chipSize.setObjectName("chipSize")
        self.chipSize.setRange(8, 8192)
        self.chipSize.setToolTip("Tile size the model expects (its fixed input size, if it has one).")
        form.addRow("Chip size (pixels)", self.chipSize)
        self.messageLabel = QLabel(self)
        self.messageLabel.setObjectName("messageLabel")
        self.messageLabel.setWordWrap(True)
        self.messageLabel.setStyleSheet(ERROR_STYLE)
        root.addWidget(self.messageLabel)
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel, self)
        buttons.accepted.connect(self._save_clicked)
        buttons.rejected.connect(self.reject)
        root.addWidget(buttons)
        self.addClassButton.clicked.connect(lambda: self.add_class(self.classesTable.rowCount(), "", "#808080"))
        self.removeClassButton.clicked.connect(self._remove_class)
        self.classesTable.itemChanged.connect(self._colour_swatch)
        self._prefill()

    def _line(self, form: QFormLayout, label: str, name: str, tip: str) -> QLineEdit:
        edit = QLineEdit(self)
        edit.setObjectName(name)
        edit.setToolTip(tip)
        form.addRow(label, edit)
        return edit

    def _prefill(self) -> None:
        """core.foreign's example card for this model (its channels and fixed size where known)."""
        from ..core.foreign import example_card, read_graph

        try:
            graph = read_graph(self.model_path, "MODEL")
        except GeoSegError as e:
            graph = None
            self.messageLabel.setText(str(e))
        self.channels = graph.channels if graph else None
        self.set_card(json.loads(example_card(graph)))

    def set_card(self, card: dict) -> None:
        """Show the fields of a card dict."""
        self.classesTable.setRowCount(0)
        for c in card.get("classes", []):
            self.add_class(c.get("value", 0), c.get("name", ""), c.get("color", "#808080"))
        self.bandsEdit.setText(", ".join(str(b) for b in card.get("bands", [])))
        norm = card.get("normalization") or {}
        self.meanEdit.setText(", ".join(f"{v:g}" for v in norm.get("mean", [])))
        self.stdEdit.setText(", ".join(f"{v:g}" for v in norm.get("std", [])))
        self.chipSize.setValue(int(card.get("chip_size") or 256))

    def add_class(self, value: int, name: str, color: str) -> None:
        r = self.classesTable.rowCount()
        self.classesTable.insertRow(r)
        for col, text in enumerate((str(value), name, color)):
            self.classesTable.setItem(r, col, QTableWidgetItem(text))

    def _remove_class(self) -> None:
        rows = sorted({i.row() for i in self.classesTable.selectedIndexes()} or {self.classesTable.rowCount() - 1})
        for r in reversed(rows):
            if r >= 0:
                self.classesTable.removeRow(r)

    def _colour_swatch(self, item: QTableWidgetItem) -> None:
        if item.column() == 2:
            colour = QColor(item.text().strip())
            item.setData(Qt.DecorationRole, colour if colour.isValid() else None)

    def _cell(self, r: int, c: int) -> str:
        item = self.classesTable.item(r, c)
        return item.text().strip() if item is not None else ""

    def card_dict(self) -> dict:
        """The form as card fields; in_channels is the number of bands."""
        classes = []
        for r in range(self.classesTable.rowCount()):
            found = _numbers(self._cell(r, 0), f"classes[{r}].value", int)
            value: Any = found[0] if len(found) == 1 else (self._cell(r, 0) or None)  # core names what is wrong
            classes.append({"value": value, "name": self._cell(r, 1), "color": self._cell(r, 2)})
        bands = _numbers(self.bandsEdit.text(), "bands", int)
        return {
            "classes": classes,
            "bands": bands,
            "in_channels": len(bands),
            "chip_size": self.chipSize.value(),
            "normalization": {
                "mean": _numbers(self.meanEdit.text(), "normalization.mean"),
                "std": _numbers(self.stdEdit.text(), "normalization.std"),
            },
        }

    def validated(self) -> dict:
        """card_dict() checked by core (ModelCard.from_dict) and against the model's input channels."""
        from ..core.card import ModelCard

        card = self.card_dict()
        ModelCard.from_dict(card, "CARD")
        if self.channels is not None and card["in_channels"] != self.channels:
            raise GeoSegError(
                f"CARD: bands: {card['in_channels']} band(s) given, but the model's input has {self.channels} "
                "channels; list one band per input channel.",
                param="CARD",
            )
        return card

    def save(self, path: str) -> str | None:
        """Validate and write the card to `path` (JSON); on success accept the dialog. Returns the error
        shown, or None."""
        from ..core.staging import atomic_write

        try:
            card = self.validated()
            with atomic_write(path, "w", what="CARD", encoding="utf-8") as f:
                json.dump(card, f, indent=2)
        except GeoSegError as e:
            self.messageLabel.setText(str(e))
            return str(e)
        self.saved_path = os.path.abspath(path)
        self.messageLabel.setText("")
        self.accept()
        return None

    def _save_clicked(self) -> None:
        try:
            self.validated()  # say what is wrong before asking where to save
        except GeoSegError as e:
            self.messageLabel.setText(str(e))
            return
        start = os.path.splitext(self.model_path)[0] + ".card.json"
        path, _ = QFileDialog.getSaveFileName(self, "Save the model card", start, "JSON (*.json)")
        if path:
            self.save(path if path.lower().endswith(".json") else path + ".json")
