"""Lay out what quantization did, from a target's BuildReport (for `edgecompress inspect`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.pipeline.report_types import BuildReport

if TYPE_CHECKING:
    from edgecompress.measure.op_profile import OperatorProfile


LAYER_COLUMNS = ["node", "op", "SQNR dB", "cosine", "weight SQNR dB", "lost dB"]
TRY_COLUMNS = ["#", "step", "calibration", "fp32 nodes", "top-1", "drop", "agreement", "fidelity", "p50 ms", "met"]
CANDIDATE_COLUMNS = ["candidate", "within budget", "top-1", "agreement", "fidelity", "p50 ms"]
OP_COLUMNS = ["op type", "runs in", "nodes", "ms / run", "share"]
NODE_COLUMNS = ["node", "op type", "runs in", "ms / run", "share"]
PROFILED_KINDS = ("ort-cpu", "ort-arm")  # engines that are ONNX files ONNX Runtime runs on this host


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


def operator_profile(target_dir: Path, report: BuildReport, runs: int = 20, top: int = 15) -> OperatorProfile | str:
    """Profile the target's engine on its kept sample inputs (batch 1) with ONNX Runtime's profiler, at the
    profile's threads and optimization level; or say why it cannot be profiled here."""
    import numpy as np

    from edgecompress.measure.op_profile import profile_operators

    engine = report.engine
    if engine.kind not in (*PROFILED_KINDS, "openvino"):
        return f"no per-operator breakdown: the {engine.kind} engine is not an ONNX Runtime or OpenVINO engine"
    if engine.path is None or not engine.runnable_here:
        return "no per-operator breakdown: the engine is built on the device (a kit)"
    path = Path(engine.path)
    if not path.is_file():
        path = Path(target_dir) / path.name
    if report.samples is None or not (Path(target_dir) / report.samples.path).is_file():
        return "no per-operator breakdown: the target folder keeps no samples.npz to run the engine on"
    with np.load(Path(target_dir) / report.samples.path) as samples:
        feeds = {name: samples[name][:1] if samples[name].ndim else samples[name] for name in samples.files}
    if engine.kind == "openvino":
        from edgecompress.measure.op_profile import profile_openvino

        return profile_openvino(path, feeds, engine.metadata.get("compile_config", {}), runs=runs, top=top)
    settings = engine.metadata.get("session_options", {})
    return profile_operators(path, feeds, threads=int(report.profile.get("threads", 0)),
                             level=settings.get("graph_optimization_level", "all"), runs=runs, top=top)


def _share(fraction: float) -> str:
    return f"{fraction:.1%}"


def operator_rows(profile: OperatorProfile) -> list[list[str]]:
    return [[o.op_type, o.kind, str(o.nodes), f"{o.ms:.3f}", _share(o.fraction)] for o in profile.by_op]


def node_rows(profile: OperatorProfile) -> list[list[str]]:
    return [[n.node, n.op_type, n.kind, f"{n.ms:.3f}", _share(n.fraction)] for n in profile.top_nodes]


def island_lines(profile: OperatorProfile) -> list[str]:
    """The per-kind split and the float islands, in words."""
    kinds = ", ".join(f"{kind} {_share(share)}" for kind, share in sorted(profile.by_kind.items(), key=lambda kv: -kv[1]))
    lines = [f"{profile.total_ms:.3f} ms of kernels per run ({profile.runs} profiled runs, batch 1): {kinds}"]
    islands = profile.islands
    if islands is None:
        lines.append("float islands: counted on ONNX Runtime engines (the same QDQ file built for the cpu target)")
    elif islands.count:
        ops = ", ".join(f"{count} {op}" for op, count in islands.float_ops.items())
        lines.append(f"{islands.count} float island(s) between int8 ops ({ops}) with {islands.convert_nodes} Q/DQ nodes "
                     f"around them: {islands.ms:.3f} ms per run, {_share(islands.fraction)} of the kernel time")
    else:
        lines.append("no float islands: nothing runs in float between int8 operators")
    return lines


def operator_tables(target: str, profile: OperatorProfile, top: int = 15) -> list[Any]:
    """Time by operator type (slowest first), the slowest nodes, and the float islands."""
    tool = "ONNX Runtime profiler" if profile.islands is not None else "OpenVINO performance counters"
    return [_rich(f"{target}: engine time by operator type ({tool})", OP_COLUMNS, operator_rows(profile)),
            _rich("slowest nodes", NODE_COLUMNS, node_rows(profile)[:top]), *island_lines(profile)]


def slower_int8_sentence(model_path: Path, int8_ms: float, fp32_ms: float, feeds: dict[str, Any], threads: int) -> str:
    """Why int8 lost to fp32, for the report when fp32 ships: the int8 model's slowest operator types and its float
    islands, as ONNX Runtime's profiler measures them."""
    from edgecompress.measure.op_profile import profile_operators

    # the feeds are the benchmark's (batch 1 along each input's own batch axis: a state's may be axis 1)
    profile = profile_operators(model_path, feeds, threads=threads, runs=10, warmup=3)
    ops = ", ".join(f"{o.op_type} {_share(o.fraction)} ({o.nodes} nodes)" for o in profile.by_op[:4])
    islands = profile.islands
    assert islands is not None, "profile_operators counts the islands of an ONNX Runtime engine"
    island_words = (f"; {islands.count} float islands ({', '.join(f'{n} {op}' for op, n in islands.float_ops.items())}) with "
                    f"{islands.convert_nodes} Q/DQ nodes take {_share(islands.fraction)}") if islands.count else "; no float islands"
    return (f"int8 is slower than fp32 here ({int8_ms:.3f} vs {fp32_ms:.3f} ms p50): in ONNX Runtime its kernel time goes to "
            f"{ops}{island_words} (`edgecompress inspect` shows the breakdown of a built int8 engine).")
