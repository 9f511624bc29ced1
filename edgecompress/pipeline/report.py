"""Report stage: report.json (BuildReport.to_dict(), the contract other tools read), report.md and latency.png.

report.json keeps these keys stable: target; engine.{kind,path,precision,size_bytes};
reference.size_bytes; accuracy.{fp32,engine}; agreement.{top1,max_abs_diff,samples};
latency_ms.{p50,p90,p99,batch,runs}; throughput_per_s; versions; fidelity.{task,metric,value,budget,met,validated_on}. Timed engines add measured_on
({arch, cpu, cores, device, session, target_arch, target_arch_matches, summary}) and latency_ms.measured_on.
"""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgecompress.core.artifacts import atomic_path, write_json_atomic, write_text_atomic
from edgecompress.measure.fidelity import TOP1_DROP, format_metric
from edgecompress.pipeline.inspect import quantization_markdown
from edgecompress.pipeline.report_types import BuildReport
from edgecompress.measure.measured_on import where_words


def _recipe_line(recipe: dict) -> str:
    """'u8s8 per-channel reduce_range minmax bias-corrected — why', from report.json's recipe."""
    label = recipe.get("label") or ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "reason")
    return f"{label} — {recipe['reason']}" if recipe.get("reason") else label


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from edgecompress import __version__

    return {
        "edgecompress": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def verdicts(report: BuildReport, max_accuracy_drop: float | None) -> list[str]:
    """Plain sentences about speed and accuracy; a slower or damaged engine is never silent:
    such sentences start with 'WARNING:' (the console prints them as warnings)."""
    lines: list[str] = []
    engine, reference = report.latency, report.reference.latency
    precision = report.engine.precision
    where = where_words(report.measured_on.to_dict() if report.measured_on else None)
    if engine and reference and precision != "fp32":  # an fp32 engine is the reference (precision choice)
        ratio = reference.p50 / engine.p50
        if ratio < 1.0:
            lines.append(
                f"WARNING: the {precision} engine is SLOWER than fp32 {where}: "
                f"{engine.p50:.3f} ms vs {reference.p50:.3f} ms (p50, batch {engine.batch})."
            )
        else:
            lines.append(
                f"The {precision} engine is {ratio:.2f}x faster than fp32 ONNX Runtime {where} "
                f"({engine.p50:.3f} ms vs {reference.p50:.3f} ms p50, batch {engine.batch})."
            )
    fidelity, accuracy = report.fidelity, report.accuracy
    if accuracy.fp32 is not None and accuracy.engine is not None:
        drop = accuracy.fp32 - accuracy.engine
        if fidelity:  # the fidelity line states the budget
            lines.append(f"Top-1 {accuracy.engine:.2f}% vs fp32 {accuracy.fp32:.2f}% (drop {drop:+.2f} points).")
        else:
            budget = TOP1_DROP.default_limit if max_accuracy_drop is None else max_accuracy_drop
            source = "default" if max_accuracy_drop is None else "--max-accuracy-drop"
            state = "within" if drop <= budget else "OVER"
            lines.append(
                f"{'WARNING: ' if state == 'OVER' else ''}Top-1 {accuracy.engine:.2f}% vs fp32 {accuracy.fp32:.2f}% "
                f"(drop {drop:+.2f} points, {state} the {budget:g}-point budget ({source}))."
            )
    classifier = not fidelity or fidelity.outputs[0]["task"] == "classify"  # top-1 of anything else measures nothing
    agreement = report.agreement
    if agreement and classifier:
        lines.append(f"Agreement with fp32: {100 * agreement.top1:.2f}% top-1 on {agreement.samples} samples.")
    if fidelity:
        lines.append(fidelity_sentence(fidelity.to_dict()))
    check = report.int8_model_check
    if check and not classifier:
        if check.fidelity is not fidelity:  # the device kit's fidelity is the check's own: said once
            lines.append("As the device computes it: " + fidelity_sentence(check.fidelity.to_dict()))
    elif check:
        lines.append(
            f"The int8 model agrees with fp32 on {100 * check.agreement.top1:.2f}% top-1 as the device "
            f"computes it ({check.agreement.samples} samples; {check.how})."
        )
    if report.engine.note:
        lines.append(report.engine.note)
    return lines


def fidelity_sentence(fidelity: dict[str, Any]) -> str:
    """'Fidelity (detect): detection F1 0.420 vs fp32, OVER the budget (detection F1 >= 0.900 (default for detect)) ...'"""
    over = not fidelity["met"]
    output = f", output {fidelity['output']}" if len(fidelity["outputs"]) > 1 else ""
    return (
        f"{'WARNING: ' if over else ''}Fidelity ({fidelity['task']}{output}): {fidelity['metric']} "
        f"{format_metric(fidelity['metric'], fidelity['value'])} vs fp32, {'OVER' if over else 'within'} the budget "
        f"({fidelity['budget']}); measured on {fidelity['validated_on']}."
    )


def fidelity_cell(report: dict[str, Any]) -> str:
    fidelity = report.get("fidelity")
    if not fidelity:
        return "n/a"
    value = f"{fidelity['metric']} {format_metric(fidelity['metric'], fidelity['value'])}"
    simulated = " (sim)" if "simulation" in fidelity["validated_on"] else ""
    return f"{value}{simulated}" if fidelity["met"] else f"[red]{value}{simulated} OVER[/red]"


def budget_cell(report: dict[str, Any]) -> str:
    """'>= 0.900 (default)': the budget of the metric the fidelity cell names, for a narrow table column."""
    fidelity = report.get("fidelity")
    if not fidelity:
        return "n/a"
    if fidelity.get("limit") is None:  # bounded by another figure (e.g. --min-agreement with labels)
        return fidelity["budget"]
    sign = ">=" if fidelity["higher_is_better"] else "<="
    return f"{sign} {format_metric(fidelity['metric'], fidelity['limit'])} ({fidelity['limit_source'].split(' for ')[0]})"


def precision_text(engine: dict[str, Any]) -> str:
    """'int8', or 'mixed (3 fp32 of 20 compute layers)' from report.json's engine.precision_layers."""
    from edgecompress.engines.base import PrecisionLabel

    return str(PrecisionLabel(engine["precision"], engine.get("precision_layers") or {}))


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def render_markdown(report: dict[str, Any]) -> str:
    engine, reference = report["engine"], report["reference"]
    accuracy, agreement = report.get("accuracy", {}), report.get("agreement") or {}
    latency, ref_latency = report.get("latency_ms") or {}, reference.get("latency_ms") or {}
    rows = [
        ("precision", "fp32", precision_text(engine)),
        ("size", _fmt(reference["size_bytes"] / 1024, ".1f", " KiB"), _fmt(engine["size_bytes"] / 1024, ".1f", " KiB")),
        ("top-1 accuracy", _fmt(accuracy.get("fp32"), ".2f", " %"), _fmt(accuracy.get("engine"), ".2f", " %")),
        ("latency p50", _fmt(ref_latency.get("p50"), ".3f", " ms"), _fmt(latency.get("p50"), ".3f", " ms")),
        ("latency p90", _fmt(ref_latency.get("p90"), ".3f", " ms"), _fmt(latency.get("p90"), ".3f", " ms")),
        ("latency p99", _fmt(ref_latency.get("p99"), ".3f", " ms"), _fmt(latency.get("p99"), ".3f", " ms")),
        ("throughput", _fmt(ref_latency.get("throughput_per_s"), ".0f", " /s"), _fmt(report.get("throughput_per_s"), ".0f", " /s")),
        ("peak memory", _fmt(report.get("memory", {}).get("reference_peak_mb"), ".1f", " MiB"),
         _fmt(report.get("memory", {}).get("engine_peak_mb"), ".1f", " MiB")),
    ]
    lines = [
        f"# edgecompress report: {report['model']['name']} → {report['target']}",
        "",
        f"Engine: `{engine['kind']}` ({precision_text(engine)}), {engine['path'] or 'built on the device (see below)'}"
        + (f"\n\nFigures measured on {report['measured_on']['summary']}." if report.get("measured_on") else ""),
        "",
        "| | fp32 reference | engine |",
        "|---|---|---|",
        *[f"| {name} | {ref} | {eng} |" for name, ref, eng in rows],
        "",
        f"Agreement with fp32 on {agreement.get('samples', 'n/a')} samples ({accuracy.get('data', '')}): "
        f"top-1 {_fmt(100 * agreement['top1'] if agreement.get('top1') is not None else None, '.2f', ' %')}, "
        f"max |diff| {_fmt(agreement.get('max_abs_diff'), '.4g')}, cosine {_fmt(agreement.get('cosine'), '.5f')}.",
        "",
        *([fidelity_sentence(report["fidelity"]), ""] if report.get("fidelity") else []),
        "## Verdict",
        *[f"- {line}" for line in report.get("verdict", [])],
        "",
        *compression_markdown(report.get("compression")),
        *_engine_section(report["engine"]),
        "## Quantization",
        f"- recipe: {_recipe_line(report['quantization']['recipe'])}",
        f"- calibration: {report['quantization']['calibration']['samples']} samples from "
        f"{report['quantization']['calibration']['source']} (sha256 {report['quantization']['calibration']['sha256'][:16]}…)",
        *quantization_markdown(report["quantization"]),
        "",
        "## Versions",
        *[f"- {name}: {version}" for name, version in report["versions"].items()],
    ]
    if report.get("latency_plot"):
        lines[4:4] = [f"![latency]({report['latency_plot']})", ""]
    return "\n".join(lines) + "\n"


def compression_markdown(compression: dict[str, Any] | None) -> list[str]:
    """The teacher -> student -> pruned -> engine table and the accuracy gate's decisions."""
    if not compression:
        return []
    lines = [
        "## Compression",
        "",
        "| stage | model | top-1 | params | FLOPs | size | latency p50 | runtime |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {s['name']} | {s.get('model', '')} | {_fmt(s.get('accuracy'), '.2f', ' %')} | {s['params']:,} | "
            f"{s['flops'] / 1e6:.1f} M | {s['size_bytes'] / 1024:.1f} KiB | {_fmt(s.get('latency_ms'), '.3f', ' ms')} | "
            f"{s.get('runtime', '')} |"
            for s in compression["stages"]
        ],
    ]
    gate = compression.get("gate")
    if gate:
        lines += ["", f"Accuracy gate ({gate['method']}, target ratio {gate['target_ratio']}, budget "
                  f"{gate['max_accuracy_drop']} points vs the teacher's {gate['reference_val_accuracy']:.2f} % on validation):"]
        lines += [f"- step {s['step']}: ratio {s['ratio']:.2f}, val {s['val_accuracy']:.2f} % (drop {s['drop']:+.2f}), "
                  f"{s['params']:,} params — {'accepted' if s['accepted'] else 'REJECTED'}" for s in gate["steps"]]
        lines.append(f"- stopped: {gate['stopped']}")
    return [*lines, ""]


def _engine_section(engine: dict[str, Any]) -> list[str]:
    """Facts the builder wants a reader to see (portability, providers, preflight...)."""
    lines = engine.get("metadata", {}).get("summary") or []
    return ["## Engine", *[f"- {line}" for line in lines], ""] if lines else []


def plot_latency(samples: dict[str, list[float]], out_path: Path, title: str) -> Path | None:
    """Per-run latency distributions of the engine and the fp32 reference."""
    if not samples or not any(samples.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=110)
    names = list(samples)
    axis.boxplot([samples[name] for name in names], orientation="horizontal", showfliers=True)
    axis.set_yticks(range(1, len(names) + 1), names)
    axis.set_xlabel("latency per run (ms)")
    axis.set_title(title, fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(out_path)


def write_report(report: BuildReport, target_dir: Path, latency_samples: dict[str, list[float]]) -> BuildReport:
    """report.json (the report's one serialisation), report.md from it, and latency.png; returns the report with its plot."""
    plot = plot_latency(latency_samples, Path(target_dir) / "latency.png", f"{report.model.name} on {report.target}")
    report = replace(report, latency_plot=plot.name if plot else None)
    as_json = report.to_dict()
    write_json_atomic(Path(target_dir) / "report.json", as_json)
    write_text_atomic(Path(target_dir) / "report.md", render_markdown(as_json))
    return report


def _timed_on(facts: dict[str, Any] | None) -> str:
    """The summary's place of measurement: the arch, or 'this host' in yellow when the target is another arch."""
    if not facts:
        return "-"
    if facts["target_arch_matches"]:
        return f"{facts['arch']} {facts['device']}"
    return f"[yellow]this host ({facts['arch']})[/yellow]"


def summary_table(reports: list[dict[str, Any]]):
    """A rich table with one row per target, for the console."""
    from rich.table import Table

    table = Table(title="edgecompress build summary")
    for column in ("target", "engine", "size", "top-1 fp32", "top-1 engine", "agree", "fidelity", "budget", "p50 ms", "p90 ms",
                   "p99 ms", "vs fp32", "timed on"):
        table.add_column(column, justify="right" if column not in ("target", "engine", "fidelity", "budget", "timed on") else "left")
    for report in reports:
        latency, reference = report.get("latency_ms") or {}, report["reference"].get("latency_ms") or {}
        fp32_engine = report["engine"]["precision"] == "fp32"  # the precision choice shipped the reference itself
        speedup = reference["p50"] / latency["p50"] if latency and reference and not fp32_engine else None
        classifier = not report.get("fidelity") or report["fidelity"]["outputs"][0]["task"] == "classify"
        agreement = (report.get("agreement") or {}).get("top1") if classifier else None
        simulated = (report.get("int8_model_check") or {}).get("agreement", {}).get("top1") if classifier else None
        table.add_row(
            report["target"],
            f"{report['engine']['kind']} {precision_text(report['engine'])}",
            f"{report['engine']['size_bytes'] / 1024:.0f} KiB",
            _fmt(report["accuracy"].get("fp32"), ".2f", "%"),
            _fmt(report["accuracy"].get("engine"), ".2f", "%"),
            _fmt(100 * agreement, ".1f", "%") if agreement is not None else _fmt(
                100 * simulated if simulated is not None else None, ".1f", "% sim"),
            fidelity_cell(report),
            budget_cell(report),
            _fmt(latency.get("p50"), ".3f"),
            _fmt(latency.get("p90"), ".3f"),
            _fmt(latency.get("p99"), ".3f"),
            "is fp32" if fp32_engine else "[red]" + _fmt(speedup, ".2f", "x (slower)") + "[/red]"
            if speedup is not None and speedup < 1 else _fmt(speedup, ".2f", "x"),
            _timed_on(report.get("measured_on")),
        )
    return table
