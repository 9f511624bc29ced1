"""Per target: repair int8 within the budget, then ship the fastest precision that meets it.

One ladder for both places an engine is built. Where it is built here (TargetModels), every
candidate is the built engine, judged and timed on the target's runner. Where the device builds
it (a kit: DeviceSimulation), every candidate is judged on this host's simulation of the device's
numerics (int8: Q/DQ in float; fp16: fp16 tensors), and the profile's order of precisions chooses,
because nothing here can time the device.

int8 is not always faster: on a 2-core AVX2 host without VNNI a small depthwise model
ran slower in int8 than in fp32 (benchmarks/quant_variants.py). So the candidates —
fp32, int8 as the target's recipe makes it, int8 with nodes kept in fp32, and fp16
where the profile lists it — are built and timed on the target's own runner,
interleaved, and the fastest one within the budget is shipped. The losers' figures stay
in the report, and a slower int8 is said plainly.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecompress.core.artifacts import atomic_path, sha256_file
from edgecompress.measure.bench import LatencyStats, benchmark
from edgecompress.engines.base import EngineArtifact, EngineBuilder, Runner, onnx_precision
from edgecompress.measure.evaluate import EvalSet, Evaluation, evaluate
from edgecompress.measure.fidelity import FidelityOptions
from edgecompress.quantize.diagnose import Diagnosis, diagnose_or_warn, plot_layers
from edgecompress.pipeline.repair import Budget, RepairOptions, RepairResult, RepairSession, RepairTry, accuracy_drop, repair
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.targets import TargetProfile


@dataclass
class Candidate:
    name: str  # "fp32" | "int8" | "int8 repaired" | "int8+fp16" | "fp16"
    model_path: Path
    within_budget: bool
    evaluation: Evaluation | None = None  # vs the fp32 reference (fp32's own: vs ONNX Runtime's fp32)
    latency: LatencyStats | None = None
    runtime: str | None = None  # another engine kind the profile compares (profile.compare_engines); None: its engine

    def to_dict(self) -> dict[str, Any]:
        e = self.evaluation
        return {
            "name": self.name,
            # what the graph computes in, e.g. mixed (2 fp32 of 9 ...); an engine built from the torch model (.pte): its name
            "label": str(onnx_precision(self.model_path)) if self.model_path.suffix == ".onnx" else self.name,
            "model_path": str(self.model_path),
            "within_budget": self.within_budget,
            "accuracy": None if e is None else e.accuracy_engine,
            "accuracy_drop": None if e is None or e.accuracy_engine is None else round(accuracy_drop(e), 3),
            "agreement": 1.0 if e is None else round(e.agreement.top1, 4),
            "fidelity": None if e is None else {f.output: {f.result.metric: round(f.result.value, 5)} for f in e.fidelity},
            "latency_ms_p50": None if self.latency is None else self.latency.p50,
            "runtime": self.runtime,
        }


@dataclass
class PrecisionChoice:
    chosen: Candidate
    candidates: list[Candidate]
    summary: list[str] = field(default_factory=list)
    latency_samples: dict[str, list[float]] = field(default_factory=dict)  # per-run times of the one interleaved run

    @property
    def fp32(self) -> Candidate:
        return next(c for c in self.candidates if c.name == "fp32")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.name, "summary": self.summary, "candidates": [c.to_dict() for c in self.candidates]}


class RememberedOutputs:
    """A runner that remembers its outputs per input content: the fp32 reference of every repair try and
    candidate is the same model on the same held-out inputs, so it runs once (a YOLOv8s on 2 cores: ~1 s an image)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._outputs: dict[str, list[np.ndarray]] = {}
        self.inputs, self.outputs = runner.inputs, runner.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(feeds):
            array = np.ascontiguousarray(feeds[name])
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        key = digest.hexdigest()
        if key not in self._outputs:
            self._outputs[key] = self._runner.run(feeds)
        return self._outputs[key]


class TargetModels:
    """Builds each candidate model once as an engine on the target's runner, in `workdir`, and keeps it:
    the candidate that ships is promoted into the target's folder, never built a second time."""

    timed = True  # candidates run on the target's own runner: timings choose among them

    def __init__(self, builder: EngineBuilder, profile: TargetProfile, workdir: Path,
                 compared: dict[str, EngineBuilder] | None = None) -> None:
        self._builder, self._profile, self._workdir = builder, profile, Path(workdir)
        self.compared = dict(compared or {})  # engine kind -> builder: timed beside the profile's engine
        self._artifacts: dict[tuple[Path, str | None], EngineArtifact] = {}
        self._runners: dict[tuple[Path, str | None], Runner] = {}

    @property
    def kind(self) -> str:
        """The profile's engine kind (a candidate whose `runtime` is None runs on it)."""
        return self._builder.kind

    @property
    def where(self) -> str:
        """Where candidates are timed, in words: this host, which is not the device for another arch."""
        from edgecompress.measure.measured_on import measured_on, where_words

        return where_words(measured_on(self._profile))

    def onnx_reference(self, fp32_path: Path) -> Runner:
        """The exported fp32 model as ONNX Runtime computes it: what even the target's fp32 engine is checked against."""
        from edgecompress.engines.ort_cpu import OrtRunner

        return OrtRunner(fp32_path, threads=self._profile.threads)

    def validated_on(self, model_path: Path) -> str:
        return f"the {onnx_precision(model_path).name} engine on this machine"

    def _built_in(self, model_path: Path, runtime: str | None) -> Path:
        return self._workdir / (sha256_file(model_path)[:16] + (f".{runtime}" if runtime else ""))

    def load(self, model_path: Path, runtime: str | None = None) -> Runner:
        """The engine of `model_path` on the profile's engine kind, or on one it compares (`runtime`)."""
        key = (model_path, runtime)
        if key not in self._runners:
            builder = self._builder if runtime is None else self.compared[runtime]
            out_dir = self._built_in(model_path, runtime)
            out_dir.mkdir(parents=True, exist_ok=True)
            artifact = builder.build(model_path, self._profile, out_dir)
            self._artifacts[key] = artifact
            self._runners[key] = builder.load(artifact, self._profile)
        return self._runners[key]

    def promote(self, model_path: Path, target_dir: Path, runtime: str | None = None) -> EngineArtifact:
        """Move the built engine of `model_path` into `target_dir` (replacing any older one); drop the other candidates."""
        self.load(model_path, runtime)
        artifact = self._artifacts[(model_path, runtime)]
        built_in = self._built_in(model_path, runtime)
        moved = {}
        for source in [*artifact.files, *([artifact.path] if artifact.path else [])]:
            destination = Path(target_dir) / Path(source).relative_to(built_in)
            if source not in moved:
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, destination)
                moved[source] = destination
        self._runners.clear()  # sessions hold the moved files open by path on some platforms
        shutil.rmtree(self._workdir, ignore_errors=True)
        return replace(artifact, path=moved.get(artifact.path) if artifact.path else None,
                       files=[moved[f] for f in artifact.files])


class DeviceSimulation:
    """A device kit's candidates, run on this host as the device computes them; the one that ships becomes the kit.

    int8 QDQ: ONNX Runtime with graph optimizations off computes Q/DQ in float (exact int8 rounding, int32-exact
    sums: TensorRT's symmetric int8 arithmetic without its fusions); with the float layers marked fp16
    (quantize/float16.py), their tensors and weights are rounded to fp16 too. fp16 models run as ONNX Runtime
    computes an fp16 graph (fp16 tensors; fp32 arithmetic where its CPU kernels lack fp16). fp32: ONNX Runtime.
    """

    timed = False  # this host is not the device: the profile's order of precisions chooses

    def __init__(self, builder: EngineBuilder, profile: TargetProfile, workdir: Path) -> None:
        self._builder, self._profile, self._workdir = builder, profile, Path(workdir)
        self._runners: dict[Path, Runner] = {}

    @property
    def where(self) -> str:
        return "on this host's simulation of the device (not timed: this host is not the device)"

    def onnx_reference(self, fp32_path: Path) -> Runner:
        from edgecompress.engines.ort_cpu import OrtRunner

        return OrtRunner(fp32_path, threads=self._profile.threads)

    def validated_on(self, model_path: Path) -> str:
        label = onnx_precision(model_path)
        if label.layers.get("int8") or label.name == "int8":
            fp16 = "; layers outside Q/DQ rounded to fp16, as --int8 --fp16 runs them" if label.layers.get("fp16") else ""
            return f"this host's ONNX Runtime simulation of the int8 model (Q/DQ in float{fp16}), not the device"
        if label.name == "fp16":
            return "this host's ONNX Runtime simulation of the fp16 model (fp16 tensors and weights), not the device"
        return "this host's ONNX Runtime run of the fp32 model (TensorRT fp32 without TF32 computes the same), not the device"

    def load(self, model_path: Path) -> Runner:
        from edgecompress.engines.ort_cpu import OrtRunner
        from edgecompress.quantize.float16 import write_fp16_rounded

        if model_path not in self._runners:
            label = onnx_precision(model_path)
            if label.layers.get("int8") or label.name == "int8":
                simulated = model_path
                if label.layers.get("fp16"):
                    self._workdir.mkdir(parents=True, exist_ok=True)
                    simulated = write_fp16_rounded(model_path, self._workdir / f"{sha256_file(model_path)[:16]}.fp16-rounded.onnx")
                self._runners[model_path] = OrtRunner(simulated, threads=self._profile.threads, level="disable")
            else:
                self._runners[model_path] = OrtRunner(model_path, threads=self._profile.threads)
        return self._runners[model_path]

    def promote(self, model_path: Path, target_dir: Path, runtime: str | None = None) -> EngineArtifact:
        """The chosen candidate becomes the device kit (a kit compares no runtimes: `runtime` is always None)."""
        self._runners.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
        return self._builder.build(model_path, self._profile, target_dir)


def fp16_model(fp32_path: Path, out_path: Path) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs (ORT's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if out_path.is_file():
        return out_path
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return out_path


def _slower_sentence(int8: Candidate, fp32: Candidate, where: str = "on this machine") -> str | None:
    if int8.latency and fp32.latency and int8.latency.p50 > fp32.latency.p50:
        return (
            f"WARNING: {int8.name} is SLOWER than fp32 {where} for this model: {int8.latency.p50:.3f} ms vs "
            f"{fp32.latency.p50:.3f} ms (p50, batch {fp32.latency.batch})."
        )
    return None


# Timings within this fraction of the fastest count as a tie, and a tie goes to the smallest
# model: on a busy or thermally throttled device a few percent is noise, while a 4x smaller
# engine is a real gain, and the shipped precision should not flip from run to run.
SPEED_TIE_MARGIN = 0.10


def _p50(candidate: Candidate) -> float:
    """A timed candidate's p50 (choose_precision times them all before anything reads one)."""
    assert candidate.latency is not None, f"candidate {candidate.name} has not been timed"
    return candidate.latency.p50


def _fastest_with_margin(eligible: list[Candidate]) -> Candidate:
    fastest = min(_p50(c) for c in eligible)
    tied = [c for c in eligible if _p50(c) <= fastest * (1.0 + SPEED_TIE_MARGIN)]
    return min(tied, key=lambda c: (c.model_path.stat().st_size, _p50(c)))


def choose_precision(
    candidates: list[Candidate], load: Callable[[Path], Runner], feeds: dict[str, np.ndarray], runs: int, max_seconds: float,
    warmup: int = 5,
    where: str = "on this machine",
) -> PrecisionChoice:
    """Time every candidate interleaved on the target's runner, once; the fastest within budget wins.

    These are the report's figures too: nothing is timed again after the choice. `where` names the place of the
    timings (measured_on.where_words): "on this host (...)" for another arch.
    """
    runners = {c.name: load(c.model_path, c.runtime) if c.runtime else load(c.model_path) for c in candidates}  # type: ignore[call-arg]
    stats, latency_samples = benchmark(runners, feeds, runs=runs, warmup=warmup, max_seconds=max_seconds)
    for candidate in candidates:
        candidate.latency = stats[candidate.name]
    eligible = [c for c in candidates if c.within_budget] or candidates
    chosen = _fastest_with_margin(eligible)
    fp32 = next((c for c in candidates if c.name == "fp32"), None)
    summary = []
    if fp32 is not None:
        summary += [line for c in candidates if c.name.startswith("int8") and (line := _slower_sentence(c, fp32, where))]
    speed = "" if fp32 is None or chosen is fp32 else f", {_p50(fp32) / _p50(chosen):.2f}x vs fp32 {_p50(fp32):.3f} ms"
    summary.append(
        f"Shipping {chosen.name}: the smallest candidate within the budget and within "
        f"{SPEED_TIE_MARGIN:.0%} of the fastest ({_p50(chosen):.3f} ms p50{speed}, {where})."
    )
    return PrecisionChoice(chosen, candidates, summary, latency_samples)


def _fp16_layers_sentence(candidate: Candidate) -> str:
    """Which layers run in fp16 in an int8+fp16 engine, and why they are not int8."""
    import onnx

    from edgecompress.engines.base import compute_layer_precisions

    layers = [name for name, kind in compute_layer_precisions(onnx.load(str(candidate.model_path), load_external_data=False)).items()
              if kind == "fp16"]
    shown = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
    return (f"int8+fp16: {len(layers)} compute layer(s) that int8 leaves out run in fp16, not fp32 ({shown}); they are out "
            "of int8 by the recipe's structural exclusions or by repair (quantization.recipe.reason, quantization.repair), "
            "and their fp16 simulation keeps the model within the budget.")


def choose_by_profile(candidates: list[Candidate], precisions: list[str], where: str) -> PrecisionChoice:
    """Without timings (a device kit): the profile's first precision with a candidate within the budget.

    "int8" is any int8 candidate: the one with its other layers in fp16 first (what practitioners build on
    a Jetson), then the repaired int8, then int8 as the recipe made it."""
    by_precision = {"int8": [c for c in reversed(candidates) if c.name.startswith("int8")]}
    for candidate in candidates:
        by_precision.setdefault(candidate.name, [candidate])
    for precision in precisions:
        for candidate in by_precision.get(precision, []):
            if candidate.within_budget:
                summary = (f"Shipping {candidate.name}: the profile's first precision ({', '.join(precisions)}) with a "
                           f"candidate within the budget, judged {where}.")
                return PrecisionChoice(candidate, candidates, [summary])
    best_int8 = by_precision["int8"][0] if by_precision["int8"] else candidates[0]
    summary = f"Shipping {best_int8.name}: no precision the profile lists ({', '.join(precisions)}) is within the budget."
    return PrecisionChoice(best_int8, candidates, [summary])


@dataclass
class TargetQuantization:
    """Everything the quantize stage decided for one target, for the engine and the report."""

    recipe: QuantRecipe
    model_path: Path  # what the engine is built from (int8, or fp32/fp16 when they won)
    repair: RepairResult
    choice: PrecisionChoice | None
    diagnosis: Diagnosis | None
    qat: dict[str, Any] | None = None  # the quantization-aware rung, when it ran (report.json quantization.qat)
    ladder: list[LadderRung] = field(default_factory=list)  # each rung's time and what it bought

    def report_fields(self, target_dir: Path | None = None) -> dict[str, Any]:
        """report.json's `quantization` additions; with `target_dir`, also the per-layer SQNR plot."""
        layers = [] if self.diagnosis is None else [layer.to_dict() for layer in self.diagnosis.layers]
        plot = plot_layers(layers, Path(target_dir) / "quant_layers.png").name if layers and target_dir else None
        return {
            "layers_plot": plot,
            "recipe": self.recipe.to_dict(),
            "model_path": str(self.model_path),
            "layers": layers,
            "worst_layers": [] if self.diagnosis is None else [layer.node for layer in self.diagnosis.worst(5)],
            "fp32_nodes": self.repair.fp32_nodes,
            "repair": {k: v for k, v in self.repair.to_dict().items() if k != "tries"},
            "tries": [t.to_dict() for t in self.repair.tries],
            "precision": None if self.choice is None else self.choice.to_dict(),
            "qat": None if self.qat is None else {**self.qat, "shipped": self.choice is not None and self.choice.chosen.name == QAT_NAME},
            "ladder": [vars(rung) for rung in self.ladder],
        }


@dataclass(frozen=True)
class LadderRung:
    """One rung of the precision ladder as the report shows it: what it cost and what it bought."""

    rung: str
    seconds: float
    outcome: str

    def describe(self) -> str:
        return f"{self.rung} {self.seconds:.0f} s ({self.outcome})"


def ladder_sentence(rungs: list[LadderRung]) -> str:
    """'Ladder: repair 85 s (...), quantization-aware training 0 s (...), precision choice 12 s (...).'"""
    return "Ladder: " + ", ".join(rung.describe() for rung in rungs) + "."


@dataclass(frozen=True)
class PrecisionSettings:
    budget: Budget
    repair: RepairOptions
    precision: str = "auto"  # auto | int8 | fp32 | fp16
    prefer: str | None = None  # auto on another architecture: the profile's first precision, when within budget
    precisions: tuple[str, ...] = ("int8", "fp16", "fp32")  # the profile's, in its order: an untimed choice follows it
    fp16_float_layers: bool = False  # the engine can run int8's float layers in fp16 (TensorRT --int8 --fp16)
    allow_over_budget: bool = False
    diagnose: bool = True
    bench_runs: int = 100
    bench_max_seconds: float = 10.0
    bench_warmup: int = 5
    fidelity: FidelityOptions = FidelityOptions()
    qat: str = "off"  # auto (when repaired int8 misses the budget) | on | off


QAT_NAME = "int8 QAT"
# (recipe, its post-training int8 model) -> (the fine-tuned int8 model, what the fine-tuning recorded)
FineTune = Callable[[QuantRecipe, Path], tuple[Path, dict[str, Any]]]


def _int8_fp16_candidate(best: RepairTry, settings: PrecisionSettings,
                         evaluate_model: Callable[[Path], Evaluation]) -> Candidate | None:
    """The best int8 with the layers it leaves in float run in fp16 (TensorRT --int8 --fp16), when there are any."""
    from edgecompress.quantize.float16 import mark_float_layers

    if not settings.fp16_float_layers or "fp16" not in settings.precisions or not onnx_precision(best.model_path).layers.get("fp32"):
        return None
    marked = mark_float_layers(best.model_path, best.model_path.with_name(best.model_path.stem + ".fp16-layers.onnx"))
    evaluation = evaluate_model(marked)
    return Candidate("int8+fp16", marked, settings.budget.met(evaluation), evaluation)


def _candidates(
    result: RepairResult, fp32_path: Path, fp16_path: Path | None, settings: PrecisionSettings,
    evaluate_model: Callable[[Path], Evaluation], fp32_evaluation: Callable[[], Evaluation],
    fine_tuned: Candidate | None = None,
) -> list[Candidate]:
    """int8 as the recipe made it, the repaired int8 (when repair changed it), int8 with its float layers in fp16
    (where the engine can), fp32, and fp16 when listed.

    Every candidate carries its own evaluation: the fp32 one too, as the target's runner built it
    (a TensorRT fp32 plan is not the ONNX model), against ONNX Runtime's fp32.
    """
    first, best = result.tries[0], result.best
    candidates = [Candidate("int8", first.model_path, first.met, first.evaluation)]
    if best is not first:
        candidates.append(Candidate("int8 repaired", best.model_path, best.met, best.evaluation))
    candidates[-1].within_budget = candidates[-1].within_budget or settings.allow_over_budget
    mixed = _int8_fp16_candidate(best, settings, evaluate_model)
    if mixed is not None:
        candidates.append(mixed)
    if fine_tuned is not None:  # after int8+fp16: an untimed choice (a kit) prefers it, every layer in int8
        candidates.append(fine_tuned)
    fp32_eval = fp32_evaluation()
    candidates.append(Candidate("fp32", fp32_path, settings.budget.met(fp32_eval), fp32_eval))
    if fp16_path is not None:
        fp16_eval = evaluate_model(fp16_path)
        candidates.append(Candidate("fp16", fp16_path, settings.budget.met(fp16_eval), fp16_eval))
    return candidates


def quantize_for_target(
    fp32_path: Path,
    eval_set: EvalSet,
    recipe: QuantRecipe,
    quantize: Callable[[QuantRecipe], Path],
    models: TargetModels | DeviceSimulation,
    feeds: dict[str, np.ndarray],
    settings: PrecisionSettings,
    fp16_path: Path | None = None,
    fine_tune: FineTune | None = None,
) -> TargetQuantization:
    """Repair within the budget (the user's, else each task metric's stated default), fine-tune with quantization
    where repair missed it (settings.qat), diagnose, then pick the precision."""
    from edgecompress.quantize.detect_tail import detector_tail_nodes

    import time

    started = time.perf_counter()
    reference = RememberedOutputs(models.load(fp32_path))  # evaluated against, never timed: tries time models.load's
    session = RepairSession(fp32_path, eval_set, quantize, models.load, reference, settings.budget, feeds, settings.repair,
                            settings.fidelity, detector_tail_nodes, timing_reference=models.load(fp32_path))
    result = repair(session, recipe)
    best: RepairTry = result.best
    diagnosis = result.diagnosis
    if settings.diagnose and (diagnosis is None or best.recipe.nodes_to_exclude):
        diagnosis = diagnose_or_warn(fp32_path, best.model_path, eval_set.inputs, settings.repair.diagnose_samples, eval_set.layout)
    evaluate_model = lambda path: evaluate(models.load(path), reference, eval_set, fidelity=settings.fidelity)  # noqa: E731
    headline = lambda evaluation: settings.budget.headline(evaluation).fidelity.result.describe()  # noqa: E731
    repaired = time.perf_counter()
    ladder = [LadderRung("repair", repaired - started, f"{len(result.tries)} tries, {headline(result.tries[0].evaluation)} -> "
                                                       f"{headline(best.evaluation)}, {'met' if result.met else 'missed'}")]
    fine_tuned, qat_record = None, None
    if fine_tune is not None and (settings.qat == "on" or (settings.qat == "auto" and not result.met)):
        fine_tuned, qat_record = _qat_rung(result, fine_tune, evaluate_model, settings.budget)
        outcome = (f"{qat_record['before']} -> {qat_record['after']}, {'met' if qat_record['met'] else 'missed'}"
                   if qat_record["ran"] else "could not run")
        ladder.append(LadderRung("quantization-aware training", time.perf_counter() - repaired, outcome))
    chosen_at = time.perf_counter()
    candidates = _candidates(
        result, fp32_path, fp16_path, settings, evaluate_model,
        lambda: evaluate(reference, models.onnx_reference(fp32_path), eval_set, fidelity=settings.fidelity), fine_tuned,
    )
    if models.timed and isinstance(models, TargetModels):  # the same candidates on the runtimes the profile compares
        candidates += [_on_runtime(c, kind, models, reference, eval_set, settings) for kind in models.compared for c in candidates]
    int8s = [c for c in reversed(candidates) if c.name.startswith("int8")]
    best_int8 = next((c for c in int8s if c.within_budget), int8s[0])
    if models.timed:
        choice = choose_precision(candidates, models.load, feeds, settings.bench_runs, settings.bench_max_seconds,
                                  settings.bench_warmup, models.where)
    else:
        choice = choose_by_profile(candidates, list(settings.precisions), models.where)
    wanted = {"int8": best_int8.name}
    if settings.precision != "auto":
        choice.chosen = next((c for c in candidates if c.name == wanted.get(settings.precision, settings.precision)),
                             choice.chosen)
        choice.summary[-1] = f"Shipping {choice.chosen.name} as requested (precision = {settings.precision})."
    elif settings.prefer is not None and models.timed:  # another architecture: the profile's order decides among candidates in budget
        preferred = next((c for c in candidates if c.name == wanted.get(settings.prefer, settings.prefer)), None)
        if preferred is not None and preferred.within_budget:
            choice.chosen = preferred
            choice.summary[-1] = (f"Shipping {preferred.name}: the profile's first precision, within the budget "
                                  "(this host's timings cannot choose for the device).")
    if not result.met and not settings.allow_over_budget and not best_int8.within_budget:
        missed = f"int8 misses the budget ({settings.budget.describe(best.evaluation)}): {result.stop_reason}"
        if settings.precision == "auto" and choice.chosen.within_budget and not choice.chosen.name.startswith("int8"):
            choice.summary[-1] = f"WARNING: {missed}; shipping {choice.chosen.name}, which meets it."
        else:
            choice.chosen = best_int8  # kept so the user can inspect it; the caller exits with BudgetNotMetError
            choice.summary[-1] = f"WARNING: {missed}; best int8 kept."
    if isinstance(models, TargetModels) and models.compared:
        _fastest_runtime(choice, settings, models.kind)
    if choice.chosen.name == "int8+fp16":
        choice.summary.insert(0, _fp16_layers_sentence(choice.chosen))
    if qat_record is not None:
        choice.summary.insert(0, qat_record["summary"])
    ladder.append(LadderRung("precision choice", time.perf_counter() - chosen_at,
                             f"{len(candidates)} candidates, {choice.chosen.name} ships"))
    choice.summary.insert(0, ladder_sentence(ladder))
    return TargetQuantization(best.recipe, choice.chosen.model_path, result, choice, diagnosis, qat_record, ladder)


def _qat_rung(result: RepairResult, fine_tune: FineTune, evaluate_model: Callable[[Path], Evaluation],
              budget: Budget) -> tuple[Candidate | None, dict[str, Any]]:
    """Fine-tune from the best try that keeps no more layers in float than the recipe does (QAT is how int8 keeps
    every layer), and judge the result by the one budget. A model the graph runner cannot train is said, not fatal."""
    from edgecompress.core.errors import EdgecompressError

    first = result.tries[0]
    start = max((t for t in result.tries if t.recipe.nodes_to_exclude == first.recipe.nodes_to_exclude), key=RepairTry.quality)
    before = budget.headline(start.evaluation).fidelity.result.describe()
    try:
        path, record = fine_tune(start.recipe, start.model_path)
    except EdgecompressError as error:
        summary = f"WARNING: quantization-aware training could not run: {error.problem}"
        return None, {"ran": False, "reason": error.problem, "summary": summary}
    evaluation = evaluate_model(path)
    met = budget.met(evaluation)
    after = budget.headline(evaluation).fidelity.result.describe()
    summary = (f"Quantization-aware training ({record['steps']} steps, {record['seconds']:.0f} s, {record['data']}): "
               f"{before} from '{start.step}' -> {after}, {'within' if met else 'missing'} the budget "
               f"({budget.describe(evaluation)}) with no layer kept in float beyond the recipe's.")
    record = {**record, "ran": True, "started_from": start.step, "before": before, "after": after, "met": met,
              "model_path": str(path), "summary": summary}
    return Candidate(QAT_NAME, path, met, evaluation), record


def _on_runtime(candidate: Candidate, runtime: str, models: TargetModels, reference: Runner, eval_set: EvalSet,
                settings: PrecisionSettings) -> Candidate:
    """`candidate`'s model as another engine kind builds it, judged by the same budget on that engine's outputs."""
    evaluation = evaluate(models.load(candidate.model_path, runtime), reference, eval_set, fidelity=settings.fidelity)
    within = settings.budget.met(evaluation) or (settings.allow_over_budget and candidate.within_budget)
    return Candidate(f"{candidate.name} on {runtime}", candidate.model_path, within, evaluation, runtime=runtime)


def _fastest_runtime(choice: PrecisionChoice, settings: PrecisionSettings, engine: str) -> None:
    """Among the engine kinds that ran the chosen model (the profile's and those it compares), ship the fastest one
    within the budget, and say both figures. The precision was chosen first; this picks only the runtime."""
    same_model = [c for c in choice.candidates if c.model_path == choice.chosen.model_path and c.latency is not None]
    if len(same_model) < 2:
        return
    eligible = [c for c in same_model if c.within_budget or settings.allow_over_budget] or [choice.chosen]
    fastest = min(eligible, key=_p50)
    figures = ", ".join(f"{c.runtime or engine} {_p50(c):.3f} ms" for c in same_model)
    if fastest is not choice.chosen:
        choice.summary[-1] += f" Runtime: {fastest.name} is faster on the same file ({figures}, p50), so it ships."
        choice.chosen = fastest
    else:
        choice.summary[-1] += f" Runtime: the fastest on the same file ({figures}, p50)."
