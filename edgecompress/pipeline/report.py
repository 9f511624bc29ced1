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
from edgecompress.measure.fidelity import METRICS, TOP1_DROP, format_metric
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
                f"The {precision} engine is {ratio:.2f}x faster than the fp32 model on the same runtime "
                f"({report.engine.kind}) {where} "
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


def plot_latency(samples: dict[str, list[float]], out_path: Path, title: str,
                 qat_curve: list[dict[str, float]] | None = None) -> Path | None:
    """Per-run latency distributions of the engine and the fp32 reference; beside them, when quantization-aware
    training ran, its loss curve (training loss per step, validation loss where measured)."""
    if not samples or not any(samples.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [entry for entry in qat_curve or [] if "step" in entry]
    figure, axes = plt.subplots(1, 2 if curve else 1, figsize=(11 if curve else 6, 3.2), dpi=110, squeeze=False)
    axis = axes[0][0]
    names = list(samples)
    axis.boxplot([samples[name] for name in names], orientation="horizontal", showfliers=True)
    axis.set_yticks(range(1, len(names) + 1), names)
    axis.set_xlabel("latency per run (ms)")
    axis.set_title(title, fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    if curve:
        _plot_qat_curve(axes[0][1], curve)
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(out_path)


def _plot_qat_curve(axis, curve: list[dict[str, float]]) -> None:
    training = [(e["step"], e["loss"]) for e in curve if "loss" in e]
    validation = [(e["step"], e["validation_loss"]) for e in curve if "validation_loss" in e]
    if training:
        axis.plot(*zip(*training), lw=0.8, alpha=0.6, label="training (batch)")
    if validation:
        axis.plot(*zip(*validation), "o-", lw=1.5, ms=3, label="validation")
    axis.set_xlabel("QAT step")
    axis.set_ylabel("distillation loss")
    axis.set_yscale("log")
    axis.set_title("quantization-aware training", fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def write_report(report: BuildReport, target_dir: Path, latency_samples: dict[str, list[float]]) -> BuildReport:
    """report.json (the report's one serialisation), report.md from it, and latency.png; returns the report with its plot."""
    qat = report.quantization.decisions.get("qat") or {}
    plot = plot_latency(latency_samples, Path(target_dir) / "latency.png", f"{report.model.name} on {report.target}",
                        qat.get("curve"))
    report = replace(report, latency_plot=plot.name if plot else None)
    as_json = report.to_dict()
    write_json_atomic(Path(target_dir) / "report.json", as_json)
    write_text_atomic(Path(target_dir) / "report.md", render_markdown(as_json))
    return report


SUMMARY_WIDTH = 100  # the console summary fits this many columns; everything else is in report.md / report.json


def _measured_on_cell(report: dict[str, Any]) -> str:
    """Where the row's figures come from: the device that ran the engine here, 'host <arch>' in yellow when the
    target is another arch (its timings say nothing about the device), 'host sim' for a kit (fidelity from this
    host's simulation of the device's int8; nothing timed)."""
    facts = report.get("measured_on")
    if not facts:
        return "[yellow]host sim[/yellow]" if _simulated(report) else "n/a"
    device = facts["arch"] if facts["device"] == "CPU" else facts["device"]
    return device if facts["target_arch_matches"] else f"[yellow]host {facts['arch']}[/yellow]"


def _simulated(report: dict[str, Any]) -> bool:
    return "simulation" in ((report.get("fidelity") or {}).get("validated_on") or "")


def _engine_cell(engine: dict[str, Any]) -> str:
    """'ort-cpu int8', 'tensorrt int8+fp16 kit': kind and precision, with 'kit' when it is built on the device."""
    from edgecompress.engines.base import PrecisionLabel

    precision = PrecisionLabel(engine["precision"], engine.get("precision_layers") or {}).short
    return f"{engine['kind']} {precision}" + ("" if engine.get("runnable_here", True) else " kit")


def _fidelity_vs_budget(report: dict[str, Any]) -> str:
    """'F1 0.968 ≥ 0.900', 'Δtop-1 0.00 ≤ 1.00 pt': the task metric against its budget; 'OVER CER 0.153 > 0.020'
    in red when missed."""
    fidelity = report.get("fidelity")
    if not fidelity:
        return "n/a"
    metric = METRICS.get(fidelity["metric"])
    name = metric.short if metric else fidelity["metric"]
    value = format_metric(fidelity["metric"], fidelity["value"])
    if fidelity.get("limit") is None:  # bounded by another figure (e.g. --min-agreement with labels)
        text = f"{name} {value} ({fidelity['budget']})"
    else:
        limit = format_metric(fidelity["metric"], fidelity["limit"])
        unit = metric.unit if metric and metric.unit in ("pt", "dB") else ""
        shown = value.removesuffix(f" {unit}") if unit else value  # '0.00 ≤ 1.00 pt', not '0.00 pt ≤ 1.00 pt'
        within, beyond = ("≥", "<") if fidelity["higher_is_better"] else ("≤", ">")
        text = f"{name} {shown} {within if fidelity['met'] else beyond} {limit}"
    return text if fidelity["met"] else f"[red]OVER {text}[/red]"  # first, so a narrow terminal never cuts it off


def _speedup_cell(report: dict[str, Any]) -> str:
    """p50 of fp32 over p50 of the engine: red below 1.00x, where the engine is slower (the verdict says so too)."""
    latency, reference = report.get("latency_ms") or {}, report["reference"].get("latency_ms") or {}
    if report["engine"]["precision"] == "fp32":  # the precision choice shipped the reference itself
        return "is fp32"
    if not latency or not reference:
        return "n/a"
    speedup = reference["p50"] / latency["p50"]
    return f"[red]{speedup:.2f}x[/red]" if speedup < 1 else f"{speedup:.2f}x"


# summary columns: header, justification, and the narrowest a column may be cut to when the terminal is narrow;
# the text columns give way first (target, engine, then the fidelity cell's tail), the figures last
SUMMARY_COLUMNS = (("target", "left", 10), ("engine", "left", 12), ("size", "right", 8), ("fidelity vs budget", "left", 16),
                   ("p50\nms", "right", 5), ("vs\nfp32", "right", 5), ("measured on", "left", 8))
SHRINK_ORDER = (0, 1, 3, 6, 2, 4, 5)
COLUMN_GAP = 2


def summary_table(reports: list[dict[str, Any]], width: int = SUMMARY_WIDTH):
    """A rich table with one row per target that fits `width` columns: what a person reads first.

    Cells never wrap: a table wider than the terminal cuts the text columns with an ellipsis, target and engine
    first; top-1 figures, p90/p99, throughput, memory and the rest are in report.md and report.json."""
    from rich.table import Table
    from rich.text import Text

    rows = [(report["target"], _engine_cell(report["engine"]), _size_text(report["engine"]["size_bytes"]),
             _fidelity_vs_budget(report), _fmt((report.get("latency_ms") or {}).get("p50"), ".3f"),
             _speedup_cell(report), _measured_on_cell(report)) for report in reports]
    natural = [max([len(line) for line in header.splitlines()] + [Text.from_markup(row[i]).cell_len for row in rows])
               for i, (header, _, _) in enumerate(SUMMARY_COLUMNS)]
    widths = _fit_widths(natural, [floor for _, _, floor in SUMMARY_COLUMNS], width - COLUMN_GAP * (len(natural) - 1))
    table = Table(title="edgecompress build summary", caption="every figure: <out>/<target>/report.md",
                  box=None, padding=(0, COLUMN_GAP // 2), pad_edge=False, header_style="bold")
    for (header, justify, _), column_width in zip(SUMMARY_COLUMNS, widths):
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis", width=column_width)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    return table


def _fit_widths(natural: list[int], floors: list[int], room: int) -> list[int]:
    """Cut columns in SHRINK_ORDER, each no narrower than its floor, until their sum fits `room`."""
    widths = list(natural)
    for index in SHRINK_ORDER:
        excess = sum(widths) - room
        if excess <= 0:
            break
        widths[index] = max(min(floors[index], widths[index]), widths[index] - excess)
    return widths


def _size_text(size_bytes: int) -> str:
    return f"{size_bytes / 1024:.0f} KiB" if size_bytes < 1024 * 1024 else f"{size_bytes / 2**20:.1f} MiB"
