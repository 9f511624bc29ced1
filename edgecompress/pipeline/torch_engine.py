"""Per target, for engines built from the torch model (`takes = "torch"`: ExecuTorch's `.pte`).

The same ladder as the ONNX route, through the same pieces: int8 from the engine's own quantizer (PT2E with
the XNNPACK quantizer, calibrated on the build's calibration set), repair by keeping modules out of that
quantizer (worst-quantized weights first, doubling), then fp32; every candidate is a built engine, judged by
the one budget against ONNX Runtime's fp32 (fidelity.py), timed interleaved on its runner here
(precision.choose_precision), and reported as a TargetQuantization like every other target's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from edgecompress.calib.load import CalibrationSet
from edgecompress.core.errors import EngineBuildError, ModelLoadError, TargetError
from edgecompress.core.logs import third_party_output
from edgecompress.core.progress import info, warn
from edgecompress.core.targets import TargetProfile
from edgecompress.engines.base import EngineArtifact, Runner, TorchEngineBuilder, TorchEngineRequest, TorchModel, engine_input
from edgecompress.measure.evaluate import EvalSet, evaluate
from edgecompress.measure.fidelity import Budget, FidelityOptions
from edgecompress.quantize.diagnose import Diagnosis
from edgecompress.pipeline.precision import Candidate, PrecisionChoice, RememberedOutputs, TargetQuantization, choose_precision
from edgecompress.pipeline.repair import RepairResult, RepairTry
from edgecompress.quantize.recipe import QuantRecipe

ORT_PHONE_TARGET = "android-arm64"


def require_torch_source(profiles: list[TargetProfile], model: str | None) -> None:
    """An ONNX-only model cannot become an engine that is built from the torch model: say so before any work."""
    from edgecompress.engines import get_builder

    builders = {p.name: get_builder(p.engine) for p in profiles}
    torch_built = [name for name, builder in builders.items() if engine_input(builder) == "torch"]
    for name in torch_built:
        unavailable = builders[name].available()
        if unavailable is not None:
            raise TargetError(f"target '{name}' needs ExecuTorch: {unavailable}",
                              'pip install -e ".[mobile]" (executorch, pinned with the project\'s torch)')
    if torch_built and model is not None and str(model).endswith(".onnx"):
        raise TargetError(
            f"target(s) {', '.join(torch_built)} build from the PyTorch model (ExecuTorch: torch.export -> .pte), "
            f"and {model} is an ONNX file",
            f"for phones with an ONNX model use --target {ORT_PHONE_TARGET} (ONNX Runtime Mobile, .ort), or pass the "
            "PyTorch model (package.module:factory --weights FILE, or a torch.export .pt2)",
        )


def torch_model(module: Any, fp32_inputs: list[str], fp32_outputs: list[str], calibration: CalibrationSet,
                batch: int) -> TorchModel:
    """The module with example inputs of the engine's batch (the calibration set's first rows) and its calibration feeds."""
    import torch

    if module is None:
        raise ModelLoadError("an ExecuTorch target needs the PyTorch model, and this build has none",
                             f"pass the PyTorch model, or use --target {ORT_PHONE_TARGET} for an ONNX model")
    if isinstance(module, torch.jit.ScriptModule) or not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"an ExecuTorch target needs a torch.nn.Module that torch.export can trace, not "
                             f"{type(module).__name__} (TorchScript cannot be re-exported)",
                             "pass package.module:factory with --weights FILE, or a torch.export .pt2")
    arrays = calibration.arrays
    example = {name: np.ascontiguousarray(arrays[name][:batch]) for name in fp32_inputs}

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for part in calibration.batches(batch):
            if all(len(part[name]) == batch for name in fp32_inputs):  # a .pte has fixed shapes: whole batches only
                yield {name: part[name] for name in fp32_inputs}

    return TorchModel(module.eval(), example, tuple(fp32_outputs), feeds)


def weight_quantization_ranking(module: Any) -> list[str]:
    """Conv/Linear modules, worst first by the SQNR of their weights under per-channel symmetric int8 (a depthwise
    kernel's nine weights per channel round worst): the modules repair keeps out of the quantizer first."""
    import torch

    scores = []
    for name, child in module.named_modules():
        weight = getattr(child, "weight", None)
        if not isinstance(child, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)) or weight is None:
            continue
        w = weight.detach().reshape(weight.shape[0], -1).double()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        error = w - torch.round(w / scale).clamp(-127, 127) * scale
        sqnr = 10 * torch.log10(w.pow(2).sum() / error.pow(2).sum().clamp_min(1e-30))
        scores.append((float(sqnr), name))
    return [name for _, name in sorted(scores)]


class TorchTargetModels:
    """Each candidate engine built once in `workdir` (keyed by its request) and kept; the one that ships is moved
    into the target's folder. Candidates are the `.pte` paths themselves."""

    timed = True

    def __init__(self, builder: TorchEngineBuilder, profile: TargetProfile, model: TorchModel, workdir: Path) -> None:
        self._builder, self._profile, self._model, self._workdir = builder, profile, model, Path(workdir)
        self._artifacts: dict[Path, EngineArtifact] = {}
        self._runners: dict[Path, Runner] = {}

    @property
    def where(self) -> str:
        from edgecompress.measure.measured_on import measured_on, where_words

        return where_words(measured_on(self._profile)) + ", x86 XNNPACK"

    def validated_on(self, model_path: Path) -> str:
        return f"the {self._artifacts[model_path].precision} .pte on this host (x86 XNNPACK), not a phone"

    def build(self, request: TorchEngineRequest) -> Path:
        import hashlib

        key = hashlib.sha256(repr((request.precision, request.keep_float, request.activations)).encode()).hexdigest()[:16]
        with third_party_output(self._builder.kind):
            artifact = self._builder.build(self._model, request, self._profile, self._workdir / key)
        assert artifact.path is not None, "a torch-built engine always runs here"
        self._artifacts[artifact.path] = artifact
        return artifact.path

    def load(self, model_path: Path) -> Runner:
        if model_path not in self._runners:
            with third_party_output(self._builder.kind):
                self._runners[model_path] = self._builder.load(self._artifacts[model_path], self._profile)
        return self._runners[model_path]

    def promote(self, model_path: Path, target_dir: Path, runtime: str | None = None) -> EngineArtifact:
        """Move the chosen .pte into `target_dir`; `runtime` (a compared engine kind) is always None here."""
        artifact = self._artifacts[model_path]
        moved = {}
        for source in artifact.files:
            destination = Path(target_dir) / Path(source).name
            os.replace(source, destination)
            moved[source] = destination
        self._runners.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
        return replace(artifact, path=moved[model_path], files=[moved[f] for f in artifact.files])


@dataclass(frozen=True)
class TorchLadderSettings:
    budget: Budget
    fidelity: FidelityOptions
    max_excluded_layers: int = 8
    precision: str = "auto"  # auto | int8 | fp32
    allow_over_budget: bool = False
    bench_runs: int = 100
    bench_max_seconds: float = 10.0
    bench_warmup: int = 5


def torch_recipe(profile: TargetProfile, request: TorchEngineRequest = TorchEngineRequest()) -> QuantRecipe:
    """The recipe as the report records it: what ExecuTorch's XNNPACK quantizer does (s8 activations, s8 symmetric
    per-channel weights, min/max observers, or ranges per call on Linear layers for a transformer encoder);
    `nodes_to_exclude` holds the modules kept out of it."""
    per_channel = bool(profile.options.get("per_channel", True))
    weights = f"symmetric {'per-channel' if per_channel else 'per-tensor'} int8 weights"
    if request.activations == "dynamic":
        return QuantRecipe(activation_type="int8", weight_type="int8", per_channel=per_channel, activations="dynamic",
                           op_types=("Linear",), nodes_to_exclude=request.keep_float,
                           reason=f"ExecuTorch XNNPACKQuantizer (PT2E) for {profile.name}, transformer encoder: Linear "
                                  f"layers only, int8 activation ranges per call (XNNPACK's dynamically quantized "
                                  f"fully-connected kernels), {weights}; LayerNorm, Softmax, GELU and the mask stay float")
    return QuantRecipe(activation_type="int8", weight_type="int8", per_channel=per_channel, nodes_to_exclude=request.keep_float,
                       reason=f"ExecuTorch XNNPACKQuantizer (PT2E) for {profile.name}: int8 activations, {weights}, "
                              "min/max calibration")


def int8_activations(fp32_path: Path) -> Literal["static", "dynamic"]:
    """Dynamic ranges for a transformer encoder (static per-tensor ranges of its Linear inputs lose its meaning, as
    on the ONNX route), static calibrated ranges for everything else."""
    import onnx

    from edgecompress.quantize.transformer import is_transformer_encoder

    return "dynamic" if is_transformer_encoder(onnx.load(str(fp32_path), load_external_data=False)) else "static"


def torch_target_stage(model: TorchModel, fp32_path: Path, eval_set: EvalSet, profile: TargetProfile,
                       builder: TorchEngineBuilder, target_dir: Path, feeds: dict[str, np.ndarray],
                       settings: TorchLadderSettings) -> tuple[TargetQuantization, TorchTargetModels]:
    """int8 -> repair (modules kept out of the quantizer) -> fp32, judged by the one budget, timed together here."""
    from edgecompress.engines.ort_cpu import OrtRunner

    activations = int8_activations(fp32_path)

    settings.budget.check_measurable(eval_set)
    models = TorchTargetModels(builder, profile, model, target_dir / ".candidates")
    reference = RememberedOutputs(OrtRunner(fp32_path, threads=profile.threads))
    tries: list[RepairTry] = []
    unbuilt: list[str] = []  # repair candidates ExecuTorch could not lower, and why

    def attempt(step: str, keep: tuple[str, ...]) -> RepairTry | None:
        request = TorchEngineRequest("int8", keep, activations)
        try:
            path = models.build(request)
        except EngineBuildError as error:
            if not keep:  # the recipe itself: no int8 try to repair from (the error names the route that works)
                raise
            # a mix of int8 and float modules the delegate cannot take (e.g. a float conv fed by a quantized
            # activation): one candidate fewer, never the end of the build
            warn(f"{profile.name}: {step}: ExecuTorch could not build this candidate ({error.problem}); repair goes on")
            unbuilt.append(f"{step} ({error.problem[:120]})")
            return None
        evaluation = evaluate(models.load(path), reference, eval_set, fidelity=settings.fidelity)
        tried = RepairTry(step, torch_recipe(profile, request), path, evaluation, settings.budget.met(evaluation))
        tries.append(tried)
        headline = settings.budget.headline(evaluation)
        info(f"{profile.name}: {step}: {headline.fidelity.result.describe()} -> "
             f"{'meets' if tried.met else 'misses'} budget ({headline.describe_budget()})")
        return tried

    first = attempt("recipe (XNNPACKQuantizer)", ())
    assert first is not None  # the recipe's own failure raised
    stop = "the recipe meets the budget"
    diagnosis = None
    if not first.met:
        diagnosis = _diagnose(builder, model, profile, TorchEngineRequest("int8", (), activations))
        ranked = ([layer.node for layer in diagnosis.ranking()] if diagnosis is not None
                  else weight_quantization_ranking(model.module))[:settings.max_excluded_layers]
        count, stop = 1, f"no more than {settings.max_excluded_layers} modules may stay fp32 (--max-excluded-layers)"
        while count <= len(ranked):
            tried = attempt(f"keep {count} module(s) out of the quantizer", tuple(ranked[:count]))
            if tried is not None and tried.met:
                stop = f"keeping {count} module(s) fp32 meets the budget"
                break
            if count == len(ranked):
                break
            count = min(count * 2, len(ranked))
        if unbuilt:
            stop += f"; not built: {'; '.join(unbuilt)}"
    met_tries = [t for t in tries if t.met]
    best = met_tries[0] if met_tries else max(tries, key=RepairTry.quality)
    result = RepairResult(best, tries, best.met, stop, settings.budget)
    candidates = [Candidate("int8", first.model_path, first.met, first.evaluation)]
    if best is not first:
        candidates.append(Candidate("int8 repaired", best.model_path, best.met, best.evaluation))
    candidates[-1].within_budget = candidates[-1].within_budget or settings.allow_over_budget
    if settings.precision == "fp16" or (settings.precision == "auto" and not best.met):  # between int8 and fp32
        fp16 = _float_candidate(models, "fp16", reference, eval_set, settings)
        if fp16 is not None:
            candidates.append(fp16)
    fp32 = _float_candidate(models, "fp32", reference, eval_set, settings)
    assert fp32 is not None  # an fp32 .pte that cannot be built raised: there is nothing below it
    candidates.append(fp32)
    choice = choose_precision(candidates, models.load, feeds, settings.bench_runs, settings.bench_max_seconds,
                              settings.bench_warmup, models.where)
    _decide(choice, candidates, result, settings)
    return TargetQuantization(best.recipe, choice.chosen.model_path, result, choice, diagnosis), models


DIAGNOSE_SAMPLES = 32  # calibration samples the per-module diagnosis runs (fp32 module and int8 program, in torch)


def _diagnose(builder: TorchEngineBuilder, model: TorchModel, profile: TargetProfile,
              request: TorchEngineRequest) -> Diagnosis | None:
    """The int8 program's per-module error, the ranking repair keeps modules out by; a failure is one warning, and
    repair ranks by the weights' own rounding error instead."""
    from itertools import islice

    try:
        return builder.diagnose(model, profile, list(islice(model.calibration(), DIAGNOSE_SAMPLES)), request)
    except Exception as error:  # any failure in torch.fx or the quantizer: the build goes on with the weight ranking
        warn(f"{profile.name}: per-module diagnosis skipped ({error.__class__.__name__}: {' '.join(str(error).split())[:200]}); "
             "repair ranks modules by their weights' int8 rounding instead")
        return None


def _float_candidate(models: TorchTargetModels, precision: Literal["fp16", "fp32"], reference: Runner, eval_set: EvalSet,
                     settings: TorchLadderSettings) -> Candidate | None:
    """The fp16 or fp32 .pte, judged by the one budget; an fp16 engine ExecuTorch cannot build is said and skipped."""
    try:
        path = models.build(TorchEngineRequest(precision))
    except EngineBuildError as error:
        if precision == "fp32":
            raise
        warn(f"ExecuTorch could not build the fp16 .pte ({error.problem}); the ladder goes on to fp32")
        return None
    evaluation = evaluate(models.load(path), reference, eval_set, fidelity=settings.fidelity)
    return Candidate(precision, path, settings.budget.met(evaluation), evaluation)


def _decide(choice: PrecisionChoice, candidates: list[Candidate], result: RepairResult, settings: TorchLadderSettings) -> None:
    """This host is not the phone: its timings cannot choose, so int8 ships when within the budget (the profile's
    first precision), else what --precision asks, else fp32 when only it meets the budget, said plainly."""
    by_name = {c.name: c for c in candidates}
    int8 = by_name.get("int8 repaired", by_name["int8"])
    if settings.precision != "auto":
        choice.chosen = int8 if settings.precision == "int8" else by_name.get(settings.precision, by_name["fp32"])
        choice.summary[-1] = f"Shipping {choice.chosen.name} as requested (precision = {settings.precision})."
    elif int8.within_budget:
        choice.chosen = int8
        choice.summary[-1] = (f"Shipping {int8.name}: the profile's first precision, within the budget (timings on this "
                              "host, x86 XNNPACK, cannot choose for the phone).")
    elif (fallback := next((by_name[name] for name in ("fp16", "fp32") if name in by_name and by_name[name].within_budget),
                           None)) is not None:  # the float rungs in order: fp16 (when built), then fp32
        what = " (XNNPACK float16, half the size of fp32)" if fallback.name == "fp16" else ""
        choice.chosen = fallback
        choice.summary[-1] = (f"WARNING: int8 misses the budget ({settings.budget.describe(result.best.evaluation)}): "
                              f"{result.stop_reason}; shipping {fallback.name}{what}, which meets it.")
    else:
        choice.chosen = int8
        choice.summary[-1] = f"WARNING: int8 misses the budget: {result.stop_reason}; best int8 kept."
