"""Lay out what quantization did, from a target's BuildReport (for `edgecompress inspect`)."""

from __future__ import annotations

from typing import Any

from edgecompress.pipeline.report_types import BuildReport


LAYER_COLUMNS = ["node", "op", "SQNR dB", "cosine", "weight SQNR dB", "lost dB"]
TRY_COLUMNS = ["#", "step", "calibration", "fp32 nodes", "top-1", "drop", "agreement", "fidelity", "p50 ms", "met"]
CANDIDATE_COLUMNS = ["candidate", "within budget", "top-1", "agreement", "fidelity", "p50 ms"]


def _num(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def layer_rows(quant: dict[str, Any], top: int) -> list[list[str]]:
    """Most damaging layers first (SQNR lost across the node)."""
    layers = sorted(quant.get("layers", []), key=lambda layer: -layer["lost_db"])[:top]
    return [[layer["node"], layer["op_type"], _num(layer["output_sqnr_db"], ".1f"), _num(layer["output_cosine"], ".4f"),
             _num(layer["weight_sqnr_db"], ".1f"), _num(layer["lost_db"], ".1f")] for layer in layers]


def _fidelity(by_output: dict[str, dict[str, float]] | None) -> str:
    """'detection F1 0.420' per output (report.json's tries[].fidelity: output -> {metric: value})."""
    from edgecompress.measure.fidelity import format_metric

    return "; ".join(f"{metric} {format_metric(metric, value)}" for figures in (by_output or {}).values()
                     for metric, value in figures.items()) or "-"


def try_rows(quant: dict[str, Any]) -> list[list[str]]:
    return [[str(i), t["step"], t["calibration_method"], str(len(t["nodes_to_exclude"])), _num(t["accuracy"]),
             _num(t["accuracy_drop"]), _num(t["agreement"], ".3f"), _fidelity(t.get("fidelity")), _num(t["latency_ms_p50"], ".3f"),
             _yes(t["met"])]
            for i, t in enumerate(quant.get("tries", []))]


def candidate_rows(quant: dict[str, Any]) -> list[list[str]]:
    candidates = (quant.get("precision") or {}).get("candidates", [])
    return [[c["name"], _yes(c["within_budget"]), _num(c["accuracy"]), _num(c["agreement"], ".3f"),
             _fidelity(c.get("fidelity")), _num(c["latency_ms_p50"], ".3f")] for c in candidates]


def _rich(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _markdown(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *["| " + " | ".join(row) + " |" for row in rows]]


def inspection_tables(report: BuildReport, top: int = 15) -> list[Any]:
    """Layers (worst first), recipe, repair tries and precision candidates as rich tables."""
    quant = report.quantization.to_dict()
    recipe = quant["recipe"]
    recipe_rows = [[key, str(recipe[key])] for key in recipe if key != "nodes_to_exclude"]
    recipe_rows.append(["nodes kept in fp32", ", ".join(recipe.get("nodes_to_exclude", [])) or "none"])
    tables = [
        _rich(f"{report.target}: int8 error per layer (most damaging first)", LAYER_COLUMNS, layer_rows(quant, top)),
        _rich("recipe", ["key", "value"], recipe_rows),
    ]
    if quant.get("tries"):
        tables.append(_rich(f"repair tries ({quant['repair']['stop_reason']})", TRY_COLUMNS, try_rows(quant)))
    if quant.get("precision"):
        tables.append(_rich(f"precision: shipping {quant['precision']['chosen']}", CANDIDATE_COLUMNS, candidate_rows(quant)))
        tables.extend(quant["precision"]["summary"])
    return tables


def quantization_markdown(quant: dict[str, Any], top: int = 8) -> list[str]:
    """report.md lines: precision choice, repair tries and the most damaged layers."""
    lines: list[str] = []
    if quant.get("precision"):
        precision = quant["precision"]
        lines += ["", f"### Precision: shipping {precision['chosen']}", *[f"- {line}" for line in precision["summary"]], ""]
        lines += _markdown(CANDIDATE_COLUMNS, candidate_rows(quant))
    if quant.get("tries"):
        lines += ["", f"### Repair ({quant['repair']['budget']}): {quant['repair']['stop_reason']}",
                  f"fp32 nodes: {', '.join(quant['fp32_nodes']) or 'none'}", ""]
        lines += _markdown(TRY_COLUMNS, try_rows(quant))
    if quant.get("layers"):
        lines += ["", "### Most damaged layers (int8 vs fp32)", "", *_markdown(LAYER_COLUMNS, layer_rows(quant, top))]
        if quant.get("layers_plot"):
            lines += ["", f"![per-layer SQNR]({quant['layers_plot']})"]
    return lines
