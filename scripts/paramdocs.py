"""Write each algorithm's parameter table into README.md, between
`<!-- params:NAME -->` and `<!-- /params:NAME -->`, from the algorithm definitions themselves.

`make docs` runs it; a test fails when the README's tables are stale.
"""

from __future__ import annotations

import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def _default(param) -> str:
    value = param.defaultValue()
    if hasattr(param, "options") and param.options() and value is not None:
        return f"{value} ({param.options()[int(value)]})"
    if value in (None, ""):
        return "—"
    return f"`{value}`"


def _kind(param) -> str:
    if hasattr(param, "options") and param.options():
        return "enum: " + ", ".join(f"{i} {o}" for i, o in enumerate(param.options()))
    return param.type().replace("_", " ")


def table(alg) -> str:
    """Markdown table of an algorithm's parameters and outputs."""
    rows = ["| name | description | type | default | |", "|---|---|---|---|---|"]
    for p in alg.parameterDefinitions():
        flags = []
        if p.flags() & p.FlagOptional:
            flags.append("optional")
        if p.flags() & p.FlagAdvanced:
            flags.append("advanced")
        rows.append(f"| `{p.name()}` | {p.description()} | {_kind(p)} | {_default(p)} | {', '.join(flags)} |")
    outs = ", ".join(f"`{o.name()}`" for o in alg.outputDefinitions())
    return "\n".join(rows) + f"\n\nOutputs: {outs}."


def render(text: str, algorithms: dict) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1)
        return f"<!-- params:{name} -->\n{table(algorithms[name])}\n<!-- /params:{name} -->"

    return re.sub(r"<!-- params:(\w+) -->.*?<!-- /params:\1 -->", repl, text, flags=re.S)


def algorithms() -> dict:
    from geoseg.algorithms.provider import ALGORITHMS

    out = {}
    for cls in ALGORITHMS:
        alg = cls()
        alg.initAlgorithm()
        out[alg.name()] = alg
    return out


def main() -> None:
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    with open(README, encoding="utf-8") as f:
        text = f.read()
    new = render(text, algorithms())
    if new != text:
        with open(README, "w", encoding="utf-8") as f:
            f.write(new)
    print("README.md parameter tables " + ("updated" if new != text else "up to date"), file=sys.stderr)


if __name__ == "__main__":
    main()
