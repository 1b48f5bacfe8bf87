"""Class tables (value, name, colour) shared by dataset.json, model cards and map styling."""

from __future__ import annotations

# Distinct, colour-blind-aware colours (Okabe-Ito + Tol) for classes 1, 2, ...; background black.
PALETTE = [
    "#0072b2",
    "#009e73",
    "#e69f00",
    "#d55e00",
    "#cc79a7",
    "#56b4e9",
    "#f0e442",
    "#882255",
    "#44aa99",
    "#999933",
    "#aa4499",
    "#332288",
    "#ddcc77",
    "#117733",
]


def class_table(values: list[int], names: dict[int, str], background: int) -> list[dict]:
    """One entry per class value (background included), sorted by value."""
    table = []
    others = 0
    for v in sorted(set(values) | {background}):
        if v == background:
            name, color = names.get(v, "background"), "#000000"
        else:
            name, color = names.get(v, f"class {v}"), PALETTE[others % len(PALETTE)]
            others += 1
        table.append({"value": int(v), "name": name, "color": color})
    return table
