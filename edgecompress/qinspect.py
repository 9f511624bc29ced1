"""Read a target's report.json and lay out what quantization did (for `edgecompress inspect`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgecompressError


class BuildDirError(EdgecompressError):
    """The folder given is not a built target (no readable report.json)."""


def load_target_report(target_dir: Path) -> dict[str, Any]:
    path = Path(target_dir) / "report.json"
    if not path.is_file():
        raise BuildDirError(f"{target_dir} has no report.json", "pass a target folder of a build, e.g. build/cpu")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BuildDirError(f"{path} is not valid JSON ({exc})", "rebuild the target with `edgecompress build`") from exc
    if "quantization" not in report:
        raise BuildDirError(f"{path} has no quantization section", "rebuild the target with `edgecompress build`")
    return report


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _num(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def inspection_tables(report: dict[str, Any], top: int = 15) -> list[Any]:
    """Layers (worst first), recipe, repair tries and precision candidates as rich tables."""
    quant = report["quantization"]
    layers = sorted(quant.get("layers", []), key=lambda layer: -layer["lost_db"])[:top]
    layer_rows = [
        [l["node"], l["op_type"], _num(l["output_sqnr_db"], ".1f"), _num(l["output_cosine"], ".4f"),
         _num(l["weight_sqnr_db"], ".1f"), _num(l["lost_db"], ".1f")]
        for l in layers
    ]
    recipe = quant["recipe"]
    recipe_rows = [[key, str(recipe[key])] for key in recipe if key != "nodes_to_exclude"]
    recipe_rows.append(["nodes kept in fp32", ", ".join(recipe.get("nodes_to_exclude", [])) or "none"])
    tables = [
        _table(f"{report['target']}: int8 error per layer (most damaging first)",
               ["node", "op", "SQNR dB", "cosine", "weight SQNR dB", "lost dB"], layer_rows),
        _table("recipe", ["key", "value"], recipe_rows),
    ]
    tries = quant.get("tries", [])
    if tries:
        tables.append(_table(
            f"repair tries ({quant.get('repair', {}).get('stop_reason', '')})",
            ["#", "step", "calibration", "fp32 nodes", "top-1", "drop", "agree", "ms p50", "met"],
            [[str(i), t["step"], t["calibration_method"], str(len(t["nodes_to_exclude"])), _num(t["accuracy"]),
              _num(t["accuracy_drop"]), _num(t["agreement"], ".3f"), _num(t["latency_ms_p50"], ".3f"), "yes" if t["met"] else "no"]
             for i, t in enumerate(tries)],
        ))
    precision = quant.get("precision")
    if precision:
        tables.append(_table(
            f"precision: shipping {precision['chosen']}", ["candidate", "within budget", "top-1", "agree", "ms p50"],
            [[c["name"], "yes" if c["within_budget"] else "no", _num(c["accuracy"]), _num(c["agreement"], ".3f"),
              _num(c["latency_ms_p50"], ".3f")] for c in precision["candidates"]],
        ))
        tables.extend(precision["summary"])
    return tables
