"""`edgecompress build`: model → fp32 ONNX → int8 → per-target engine → verified report.

The build is BUILD_STEPS, shared by every target, then `build_target` per target. Each step
is a function from artifact to artifact, cached on its inputs' content hashes (export_key,
quantize_key), so a second build for another target reuses export and quantization; each
target's steps return their part of the BuildReport, assembled once and written once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import onnx

from edgecompress.core.artifacts import sha256_file, sha256_json
from edgecompress.core.cache import cached_artifact, module_hash
from edgecompress.calib.diagnostics import diagnose
from edgecompress.calib.load import MAKE_A_SET, CalibrationSet, calibration_set_from_arrays, load_calibration_set
from edgecompress.compress.stage import Compression, compress_stage, compression_report
from edgecompress.core.config import BuildConfig
from edgecompress.source.data import DigitsSplits as Splits
from edgecompress.engines import EngineArtifact, EngineBuilder, build_place, checked_profiles, get_builder
from edgecompress.engines.base import engine_input
from edgecompress.pipeline.torch_engine import TorchLadderSettings, require_torch_source, torch_model, torch_target_stage
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.core.errors import BudgetNotMetError, CalibrationError, ConfigError
from edgecompress.measure.evaluate import EvalSet, evaluate
from edgecompress.measure.fidelity import Budget, DetectionOptions, FidelityOptions, fidelity_report, parse_per_output
from edgecompress.export.graph import OnnxModelInfo, input_dims, model_io, opset_of, prepare_onnx, read_onnx
from edgecompress.export.torch_export import export_torch
from edgecompress.presets.example import load_model_or_example
from edgecompress.source.model import SourceModel
from edgecompress.core.progress import info, warn
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.quantize.transformer import is_transformer_encoder, transformer_recipe
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.isa import host_arch
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.pipeline.report import verdicts, versions, write_report
from edgecompress.pipeline.report_types import (
    Accuracy, Agreement, BuildFacts, BuildReport, CalibrationFacts, EngineFacts, Fidelity, Int8ModelCheck, LatencyFigures,
    MeasuredOn, MemoryFigures, ModelFacts, QuantizationFacts, ReferenceFacts, SampleInputs, SimulatedAccuracy,
)
from edgecompress.core.targets import TargetProfile
from edgecompress.source.layout import batch_layout, parse_batch_axes
from edgecompress.quantize.recipe_exclusions import with_structural_exclusions

CALIBRATION_COUNT_FROM_DATA = 256  # calibration samples drawn from --data's train split when --calib is not given


@dataclass(frozen=True)
class BuildContext:
    """What every target's build shares: the config, the model, the fp32 ONNX and the data.

    BUILD_STEPS fill it in order; a field is None until its step has run."""

    config: BuildConfig
    source: SourceModel | None = None
    compression: Compression | None = None
    fp32: OnnxModelInfo | None = None
    calibration: CalibrationSet | None = None
    eval_set: EvalSet | None = None
    labelled: Splits | None = None  # the compression data, else --data's splits: calibration and evaluation draw from it


_Filled = TypeVar("_Filled")


def _filled(value: _Filled | None, step: str) -> _Filled:
    """A BuildContext field that `step` fills: None here is a bug in the order of BUILD_STEPS, not a user error."""
    if value is None:
        raise RuntimeError(f"build step '{step}' has not run yet")
    return value


@dataclass(frozen=True)
class TargetContext:
    """The BuildContext once every BUILD_STEPS step has run: what each target's build reads, nothing missing."""

    config: BuildConfig
    source: SourceModel
    fp32: OnnxModelInfo
    calibration: CalibrationSet
    eval_set: EvalSet
    compression: Compression | None
    labelled: Splits | None = None  # --data (or the compression data): quantization-aware training's inputs

    @classmethod
    def after_steps(cls, context: BuildContext) -> TargetContext:
        return cls(context.config, _filled(context.source, "load model"), _filled(context.fp32, "export fp32 ONNX"),
                   _filled(context.calibration, "calibration set"), _filled(context.eval_set, "evaluation set"),
                   context.compression, context.labelled)


@dataclass(frozen=True)
class Step:
    """One step of the build: a function from the artifacts so far to the same with its own added.

    Its typed config is the BuildConfig every step reads; `cache_key`, where the step caches its artifact,
    is the content-hash key it is stored under (steps without one always run, or cache inside: compress)."""

    name: str
    run: Callable[[BuildContext], BuildContext]
    cache_key: Callable[[BuildContext], dict[str, Any]] | None = None


def load_step(context: BuildContext) -> BuildContext:
    config = context.config
    source = load_model_or_example(config.model, config.weights, config.input_shape, config.pooling)
    return replace(context, source=replace(source, batch_axes=parse_batch_axes(config.batch_axis)))


def compress_step(context: BuildContext) -> BuildContext:
    source = _filled(context.source, "load model")
    compression = compress_stage(source, context.config)
    if compression is None:
        return context
    # the compressed student is exported in the source model's place
    student = replace(source, module=compression.module, content_hash=module_hash(compression.module))
    return replace(context, source=student, compression=compression, labelled=compression.splits)


def export_step(context: BuildContext) -> BuildContext:
    return replace(context, fp32=export_stage(_filled(context.source, "load model"), context.config))


def calibration_step(context: BuildContext) -> BuildContext:
    source, fp32 = _filled(context.source, "load model"), _filled(context.fp32, "export fp32 ONNX")
    labelled = _labelled_data(source, context.config, context.labelled)
    calibration = calibration_stage(source, fp32, context.config, labelled)
    return replace(context, labelled=labelled, calibration=calibration)


def eval_step(context: BuildContext) -> BuildContext:
    source, fp32 = _filled(context.source, "load model"), _filled(context.fp32, "export fp32 ONNX")
    calibration = _filled(context.calibration, "calibration set")
    return replace(context, eval_set=eval_stage(source, fp32, calibration, context.config, context.labelled))


# The build, shared by every target; then build_target runs per target: quantize (repair within the budget) and
# choose the precision, build the engine, measure it once, check int8 as the device computes it, report.
BUILD_STEPS = (
    Step("load model", load_step),
    Step("compress (distill, prune)", compress_step),
    Step("export fp32 ONNX", export_step, lambda context: export_key(_filled(context.source, "load model"), context.config)),
    Step("calibration set", calibration_step),
    Step("evaluation set", eval_step),
)


StepRun = Callable[[BuildContext], BuildContext]


def build(config: BuildConfig, context: BuildContext | None = None,
          replaced: dict[StepRun, StepRun] | None = None) -> list[dict[str, Any]]:
    """Run the whole build; returns one report.json dict per target. The Python API starts from a context that holds
    the user's in-memory model and replaces the steps whose artifacts it already has (`replaced`: step run -> run)."""
    profiles = checked_profiles(config.target)  # a typo in --target or in a profile's options fails before any work
    require_torch_source(profiles, config.model)  # an ONNX file for an ExecuTorch target: before any work too
    config.out.mkdir(parents=True, exist_ok=True)
    context = run_steps(context or BuildContext(config), [step.run for step in BUILD_STEPS], replaced)
    ready = TargetContext.after_steps(context)
    return [build_target(ready, profile).to_dict() for profile in profiles]


def run_steps(context: BuildContext, runs: list[StepRun], replaced: dict[StepRun, StepRun] | None = None) -> BuildContext:
    """`runs` in order, each swapped for its replacement where `replaced` has one: the whole build runs BUILD_STEPS,
    the Python API's one-step functions (api.py) the few a step needs, with the same replacements for in-memory data."""
    for run in runs:
        context = (replaced or {}).get(run, run)(context)
    return context


def export_key(source: SourceModel, config: BuildConfig) -> dict[str, Any]:
    """What the fp32 ONNX depends on: the model's content, its input shapes and the export settings."""
    if source.is_onnx:
        return {"onnx": source.content_hash, "input_shapes": source.input_shapes, "batch_axes": source.batch_axes, "stage": "prepare-v3"}
    return {
        "module": module_hash(source.module),
        "source": source.content_hash, "input_dtypes": source.input_dtypes, "output_names": source.output_names,  # a checkpoint's pooling is not in module_hash
        "input_shapes": source.input_shapes,
        "opset": config.opset,
        "exporter": config.exporter,
        "tolerance": config.export_tolerance,
        "stage": "export-v1",
    }


def export_stage(source: SourceModel, config: BuildConfig) -> OnnxModelInfo:
    path = config.out / "model.fp32.onnx"
    onnx_path = source.onnx_path
    if onnx_path is not None:
        produce = lambda out: _record(prepare_onnx(onnx_path, out, source.input_shapes, source.batch_axes))  # noqa: E731
    else:
        produce = lambda out: _record(  # noqa: E731
            export_torch(source.module, source.input_shapes, out, config.opset, config.exporter, config.export_tolerance,
                         source.input_dtypes, source.output_names)
        )
    result, reused = cached_artifact(path, export_key(source, config), produce)
    diff = result.get("max_abs_diff")
    info(f"export: {'reused' if reused else 'wrote'} {path}" + (f" (ORT vs PyTorch max |diff| {diff:.2g})" if diff is not None else ""))
    model = read_onnx(path)
    inputs, outputs = model_io(model)
    return OnnxModelInfo(path, inputs, outputs, opset_of(model), diff, batch_layout(input_dims(model), source.batch_axes))


def _record(model_info: OnnxModelInfo) -> dict[str, Any]:
    return {"max_abs_diff": model_info.export_max_abs_diff, "opset": model_info.opset}


def _preprocess_spec(config: BuildConfig) -> dict[str, Any] | None:
    """How raw images become inputs, when known (the digits data's spec); bundles carry it to devices."""
    from edgecompress.source.data import DIGITS_SPEC

    return DIGITS_SPEC.to_dict() if config.data == "digits" else None


def _labelled_data(source: SourceModel, config: BuildConfig, labelled: Splits | None) -> Splits | None:
    """The compression data when there was compression, else --data's splits, else None."""
    if labelled is None and config.data is not None:
        from edgecompress.compress.sources import load_labelled_data
        from edgecompress.compress.stage import data_preprocess

        return load_labelled_data(config.data, data_preprocess(source), config.seed)
    return labelled


def calibration_stage(source: SourceModel, fp32: OnnxModelInfo, config: BuildConfig, labelled: Splits | None) -> CalibrationSet:
    if config.calib is not None:
        calibration = load_calibration_set(config.calib, fp32.inputs, fp32.layout)
    elif labelled is not None:
        arrays = {fp32.inputs[0].name: labelled.train.x[:CALIBRATION_COUNT_FROM_DATA]}
        calibration = calibration_set_from_arrays(arrays, fp32.inputs, f"{config.data} train split")
    else:
        raise CalibrationError(f"model '{source.name}' needs calibration data for int8 (--calib PATH)", MAKE_A_SET)
    warn_calibration_findings(calibration)
    return calibration


def warn_calibration_findings(calibration: CalibrationSet) -> None:
    """The calibration diagnostics (constant or near-duplicate samples, too few), each one warning."""
    batched_on_axis_0 = {name: a for name, a in calibration.arrays.items() if calibration.batch_layout.axis(name, a) == 0}
    for finding in diagnose(batched_on_axis_0):  # the checks read samples on axis 0
        warn(f"calibration: {finding}")


def eval_stage(source: SourceModel, fp32: OnnxModelInfo, calibration: CalibrationSet, config: BuildConfig,
               labelled: Splits | None) -> EvalSet:
    if config.eval_data is not None:
        held_out = load_calibration_set(config.eval_data, fp32.inputs, fp32.layout)
        return EvalSet(held_out.arrays, held_out.labels, f"{config.eval_data} (held out)", held_out.layout)
    if labelled is not None:
        from edgecompress.compress.sources import has_labels

        test = labelled.test
        # a .npz without `y` holds placeholder labels: judge by agreement with fp32, never by accuracy on those
        labels = test.y if has_labels(test) else None
        return EvalSet({fp32.inputs[0].name: test.x}, labels, f"{config.data} test split (held out{'' if labels is not None else ', unlabelled'})")
    warn("no --eval-data: agreement is measured on the calibration inputs, which are not held out")
    return EvalSet(calibration.arrays, calibration.labels, f"{calibration.source} (calibration inputs, not held out)", calibration.layout)


def target_recipe(profile: TargetProfile, config: BuildConfig, fp32_path: Path | None = None) -> QuantRecipe:
    """The target's recipe with the config's options; with the fp32 model, what int8 cannot take stays fp32
    (recipe_exclusions.py)."""
    recipe = recipe_for_target(profile).with_options(
        calibration_method=config.calibration_method,
        percentile=config.percentile,
        per_channel=config.per_channel,
        nodes_to_exclude=tuple(config.nodes_to_exclude),
        equalize=config.equalize == "on" or (config.equalize == "auto" and not config.per_channel),
    )
    # auto: where bias correction measured to help (benchmarks/bias_correction.py): coarse weights — 7-bit
    # (reduce_range) or one scale per tensor. With full-range per-channel weights it lowered the logit error
    # but moved agreement both ways, so there repair tries it instead.
    coarse_weights = recipe.reduce_range or not recipe.per_channel
    recipe = recipe.with_options(bias_correction=config.bias_correction == "on" or (config.bias_correction == "auto" and coarse_weights))
    if fp32_path is None:
        return recipe
    recipe = with_structural_exclusions(recipe, fp32_path)
    if is_transformer_encoder(onnx.load(str(fp32_path), load_external_data=False)):
        recipe = transformer_recipe(recipe, profile.engine)
    return recipe


def quantize_key(fp32: Path, calibration: CalibrationSet, recipe: QuantRecipe) -> dict[str, Any]:
    """What an int8 model depends on: the fp32 model's bytes, the calibration arrays, the recipe and the runtime."""
    import onnxruntime

    return {
        "fp32": sha256_file(fp32),
        "calibration": calibration.sha256,
        "recipe": recipe.cache_key(),
        "onnxruntime": onnxruntime.__version__,
    }


def quantize_stage(out: Path, fp32: Path, calibration: CalibrationSet, recipe: QuantRecipe) -> Path:
    """int8 models are shared by targets whose recipes agree, and with `edgecompress.quantize_int8` (cached by content
    under the build folder `out`)."""
    key = quantize_key(fp32, calibration, recipe)
    path = out / "int8" / f"model.int8.{sha256_json(key)[:12]}.onnx"

    def produce(int8: Path) -> None:
        quantize_model(fp32, calibration, recipe, int8)

    _, reused = cached_artifact(path, key, produce)
    info(f"quantize: {'reused' if reused else 'wrote'} {path} ({recipe.label})")
    return path


def _batch_size(context: TargetContext, wanted: int) -> int:
    fixed = context.fp32.inputs[0].shape[0]
    return fixed if isinstance(fixed, int) else wanted


def _bench_feeds(eval_set: EvalSet, batch: int) -> dict[str, np.ndarray]:
    return eval_set.batch_layout.repeated(eval_set.inputs, batch)


def build_budget(config: BuildConfig) -> Budget:
    """The one budget of the build: repair, precision choice and verdict all judge by it."""
    limits = tuple((name, float(value)) for name, value in parse_per_output(config.fidelity_budget, "--fidelity-budget"))
    return Budget(config.max_accuracy_drop, config.min_agreement, limits)


def fidelity_options(config: BuildConfig) -> FidelityOptions:
    return FidelityOptions(
        tasks=parse_per_output(config.task, "--task"),
        detection=DetectionOptions(config.detect_score_threshold, config.detect_nms_iou, config.detect_match_iou),
        ctc_blank=config.ctc_blank if config.sequence_decode == "ctc" else None,
    )


def over_budget_error(report: BuildReport) -> BudgetNotMetError:
    fidelity = report.fidelity
    assert fidelity is not None, "only a report whose measured fidelity missed the budget is over it"
    return BudgetNotMetError(
        f"{report.target}: {fidelity.metric} {fidelity.value:.4g} misses the budget ({fidelity.budget}), "
        f"measured on {fidelity.validated_on}",
        "loosen the budget (--fidelity-budget, --max-accuracy-drop), ship fp32, or pass --allow-over-budget",
    )


def build_target(context: TargetContext, profile: TargetProfile) -> BuildReport:
    """Quantize and choose the precision, build the engine, measure it once, check int8 as the device computes it,
    and write the report: each step returns its part, and the BuildReport is assembled once from them."""
    started = time.perf_counter()
    config = context.config
    builder = get_builder(profile.engine)
    recipe = target_recipe(profile, config, context.fp32.path)
    target_dir = config.out / profile.name
    target_dir.mkdir(parents=True, exist_ok=True)
    place = build_place(builder, profile)  # asked once: TensorRT probes for a GPU
    if not place.here:
        info(f"{profile.name}: the engine is built on the device ({place.reason}); this host runs the same ladder "
             "on its simulation of the device's numerics and writes the kit")
    # the one ladder (repair, precision): candidates are built engines here, or simulations of the device for a kit;
    # the one that ships is moved into target_dir (an engine) or written there as the device kit
    if engine_input(builder) == "torch":  # ExecuTorch: built, quantized and repaired from the torch module itself
        chosen, models = torch_engine_stage(context, profile, builder, target_dir)
    else:
        chosen, models = quantize_target_stage(context, profile, builder, recipe, target_dir, here=place.here)
        if place.here and chosen.choice is not None:
            explain_fp32(context, profile, chosen.choice)
    recipe, model_path = chosen.recipe, chosen.model_path
    artifact = models.promote(model_path, target_dir, chosen.choice.chosen.runtime if chosen.choice else None)
    samples = samples_stage(context.eval_set, target_dir)
    measured = engine_measurements(context, profile, artifact, chosen.choice) if place.here else None
    check, simulated = None, None
    if not place.here:  # a kit: its figures are the ladder's, on this host's simulation of the device
        simulated = simulated_check(context, chosen.choice.chosen.evaluation, models.validated_on(model_path),
                                    "int8" if artifact.precision == "mixed" else artifact.precision)
        check = simulated if artifact.precision in ("int8", "mixed") else None
    elif artifact.precision in ("int8", "mixed") and profile.arch != host_arch() and engine_input(builder) == "onnx":
        check = check_int8_model(context, profile, model_path)
    engine = engine_facts(artifact)
    reference_size = context.fp32.path.stat().st_size
    decisions = chosen.report_fields(target_dir)
    simulation = simulated or check  # without a measurement here: what the simulation of the device says
    build_facts = BuildFacts(datetime.now(timezone.utc).isoformat(timespec="seconds"), config.model_dump(mode="json"))
    report = BuildReport(
        target=profile.name,
        model=model_facts(context),
        preprocess=_preprocess_spec(config),
        profile=profile.summary(),
        engine=engine,
        reference=ReferenceFacts(str(context.fp32.path), "fp32", reference_size,
                                 latency=measured.reference_latency if measured else None),
        size_ratio_vs_fp32=reference_size / engine.size_bytes if engine.size_bytes else None,
        quantization=QuantizationFacts(recipe.to_dict(), str(model_path), calibration_facts(context.calibration),
                                       {k: v for k, v in decisions.items() if k not in ("recipe", "model_path")}),
        accuracy=measured.accuracy if measured else Accuracy(None, None, context.eval_set.description),
        agreement=measured.agreement if measured else None,
        latency=measured.latency if measured else None,
        throughput_per_s=measured.latency.throughput_per_s if measured else None,
        memory=measured.memory if measured else None,
        versions=versions(),
        build=build_facts,
        samples=samples,
        fidelity=measured.fidelity if measured else simulation.fidelity if simulation else None,
        speedup_vs_fp32=measured.speedup_vs_fp32 if measured else None,
        measured_on=measured.measured_on if measured else None,
        compression=None if context.compression is None else compression_report(
            context.compression.record, profile.name, f"{engine.kind} {engine.precision}",
            measured.accuracy.engine if measured else None, engine.size_bytes, measured.latency.p50 if measured else None),
        int8_model_check=check,
    )
    verdict = verdicts(report, config.max_accuracy_drop) + chosen.choice.summary
    fidelity_over = report.fidelity is not None and not report.fidelity.met
    # the shipped engine's own measurement (or, for a kit, its simulation's) decides; without one, the repair's
    over_budget = fidelity_over if report.fidelity else not chosen.repair.met
    if over_budget and config.allow_over_budget:
        verdict.append("WARNING: the engine is OVER the budget and ships only because --allow-over-budget is set.")
    report = replace(report, verdict=verdict, build=replace(build_facts, seconds=round(time.perf_counter() - started, 2)))
    report = write_report(report, target_dir, measured.latency_samples if measured else {})
    for line in report.verdict:
        (warn if line.startswith("WARNING") else info)(f"{profile.name}: {line.removeprefix('WARNING: ')}")
    shipped = chosen.choice.chosen
    if shipped.name.startswith("int8") and not shipped.within_budget:  # fp32/fp16/int8+fp16 within budget: no error
        chosen.repair.raise_if_unmet(config.allow_over_budget)
    if fidelity_over and not config.allow_over_budget:
        raise over_budget_error(report)
    return report


def quantize_target_stage(context: TargetContext, profile: TargetProfile, builder, recipe: QuantRecipe, target_dir: Path,
                          here: bool = True):
    """Repair within the budget and pick the precision (precision.py): the fastest on the target's runner when the
    engine is built here, else the profile's first precision within the budget on this host's simulation."""
    from edgecompress.pipeline.precision import DeviceSimulation, PrecisionSettings, TargetModels, fp16_model, quantize_for_target
    from edgecompress.pipeline.repair import RepairOptions

    config = context.config
    budget = build_budget(config)
    budget.check_measurable(context.eval_set)
    if config.precision != "auto" and config.precision not in profile.precisions:
        raise ConfigError(
            f"precision '{config.precision}' is not one that target '{profile.name}' runs ({', '.join(profile.precisions)})",
            "use --precision auto or one of the target's precisions",
        )
    prefer = None
    if config.precision == "auto" and profile.arch != host_arch() and here:
        # timing on this host says nothing about the device's speed: the profile's first precision, if in budget
        prefer = profile.precisions[0]
        info(f"{profile.name}: precision {prefer} from the profile when within the budget (this {host_arch()} host "
             "is not the device; its timings cannot choose the precision)")
    settings = PrecisionSettings(
        budget,
        RepairOptions(
            max_excluded_layers=config.max_excluded_layers, strategy=config.repair_strategy, try_equalize=config.equalize != "off",
            try_bias_correction=config.bias_correction == "auto",
            latency_runs=0,  # tries are judged on fidelity; the candidates are timed once, together, afterwards
        ),
        precision=config.precision,
        prefer=prefer,
        allow_over_budget=config.allow_over_budget,
        diagnose=config.diagnose,
        bench_runs=config.bench_runs,
        bench_max_seconds=config.bench_max_seconds,
        bench_warmup=config.bench_warmup,
        fidelity=fidelity_options(config),
        precisions=tuple(profile.precisions),
        fp16_float_layers=getattr(builder, "runs_float_layers_in_fp16", False),
        qat=config.qat,
    )
    fp16 = None
    if "fp16" in profile.precisions:
        fp16 = fp16_model(context.fp32.path, config.out / f"model.fp16.{sha256_file(context.fp32.path)[:12]}.onnx")
    feeds = _bench_feeds(context.eval_set, _batch_size(context, profile.batch.opt))
    models = (TargetModels(builder, profile, target_dir / ".candidates", compared_engines(profile)) if here
              else DeviceSimulation(builder, profile, target_dir / ".candidates"))
    quantization = quantize_for_target(
        context.fp32.path, context.eval_set, recipe, lambda r: quantize_stage(config.out, context.fp32.path, context.calibration, r),
        models, feeds, settings, fp16, lambda r, post_training: _fine_tuned(context, r, post_training),
    )
    return quantization, models


def torch_engine_stage(context: TargetContext, profile: TargetProfile, builder, target_dir: Path):
    """The ladder of an engine built from the torch module (torch_engine.py), with this build's budget and data."""
    config = context.config
    if config.qat != "off":
        warn(f"{profile.name}: quantization-aware training is not applied to ExecuTorch engines yet (--qat {config.qat} ignored)")
    batch = _batch_size(context, profile.batch.opt)
    model = torch_model(context.source.module, [s.name for s in context.fp32.inputs], [s.name for s in context.fp32.outputs],
                        context.calibration, batch)
    settings = TorchLadderSettings(build_budget(config), fidelity_options(config), config.max_excluded_layers, config.precision,
                                   config.allow_over_budget, config.bench_runs, config.bench_max_seconds, config.bench_warmup)
    return torch_target_stage(model, context.fp32.path, context.eval_set, profile, builder, target_dir,
                              _bench_feeds(context.eval_set, batch), settings)


def explain_fp32(context: TargetContext, profile: TargetProfile, choice) -> None:
    """When fp32 ships because every int8 candidate was slower, the summary names the operators that made it slower."""
    from edgecompress.pipeline.inspect import slower_int8_sentence

    int8s = [c for c in choice.candidates if c.name.startswith("int8") and c.latency is not None]
    if not choice.chosen.name.startswith("fp32") or choice.chosen.latency is None or not int8s:
        return
    fastest = min(int8s, key=lambda c: c.latency.p50)
    if fastest.latency.p50 <= choice.chosen.latency.p50:
        return  # int8 was as fast, and missed the budget: the summary says that already
    feeds = _bench_feeds(context.eval_set, 1)
    try:
        choice.summary.append(slower_int8_sentence(fastest.model_path, fastest.latency.p50, choice.chosen.latency.p50, feeds,
                                                   profile.threads))
    except Exception as error:  # an explanation, never a reason to lose the build
        warn(f"{profile.name}: could not profile the int8 model's operators ({type(error).__name__}: {error}); "
             "`edgecompress inspect` may still show them")


def compared_engines(profile: TargetProfile) -> dict[str, EngineBuilder]:
    """The engine kinds the profile times beside its own (compare_engines) that can build here; the others are said."""
    compared: dict[str, EngineBuilder] = {}
    for kind in profile.compare_engines:
        builder = get_builder(kind)
        reason = builder.available()
        if reason is None and kind != profile.engine:
            compared[kind] = builder
        elif reason is not None:
            info(f"{profile.name}: {kind} is not timed beside {profile.engine}: {reason}")
    return compared


def _fine_tuned(context: TargetContext, recipe: QuantRecipe, post_training_int8: Path) -> tuple[Path, dict[str, Any]]:
    from edgecompress.pipeline.qat_stage import QatSources, qat_stage

    sources = QatSources(context.config, context.fp32.path, [spec.name for spec in context.fp32.inputs], context.calibration,
                         context.labelled)
    outcome = qat_stage(sources, recipe, post_training_int8)
    return outcome.model_path, outcome.record


SAMPLE_COUNT = 8


def samples_stage(eval_set: EvalSet, target_dir: Path) -> SampleInputs:
    """Keep a few held-out inputs beside the engine: bundles carry them for the device self-test."""
    from edgecompress.core.artifacts import atomic_path, save_npz

    path = target_dir / "samples.npz"
    with atomic_path(path) as tmp:
        save_npz(tmp, {name: array[:SAMPLE_COUNT] for name, array in eval_set.inputs.items()})
    return SampleInputs(path.name, min(SAMPLE_COUNT, *(len(a) for a in eval_set.inputs.values())), eval_set.description)


@dataclass(frozen=True)
class EngineMeasurements:
    """The shipped engine's figures, all taken from the precision choice's one evaluation and one timing run."""

    accuracy: Accuracy
    agreement: Agreement
    fidelity: Fidelity
    latency: LatencyFigures
    reference_latency: LatencyFigures
    speedup_vs_fp32: float
    measured_on: MeasuredOn
    memory: MemoryFigures
    latency_samples: dict[str, list[float]]  # per-run times of the engine and the fp32 reference, for latency.png


def engine_measurements(context: TargetContext, profile: TargetProfile, artifact: EngineArtifact, choice) -> EngineMeasurements:
    """The report's accuracy and latency are the precision choice's own measurements (one evaluation per candidate,
    one interleaved timing run with fp32): nothing is measured twice. Peak memory comes from fresh processes."""
    from edgecompress.measure.memory import peak_memory_mb

    chosen, fp32 = choice.chosen, choice.fp32
    evaluation = chosen.evaluation
    assert evaluation is not None, f"candidate {chosen.name} has no evaluation: precision._candidates evaluates every one, fp32 too"
    where = measured_on_facts(profile, artifact)
    feeds = _bench_feeds(context.eval_set, _batch_size(context, profile.batch.opt))
    reference_artifact = EngineArtifact(profile.name, "ort-cpu", "fp32", context.fp32.path)
    memory = MemoryFigures(
        engine_peak_mb=peak_memory_mb(artifact, profile, feeds),
        reference_peak_mb=peak_memory_mb(reference_artifact, profile, feeds),
        how="peak RSS growth of a fresh process loading and running the engine (runtime import excluded)",
    )
    info(f"{profile.name}: measured once — {len(choice.candidates)} candidates timed interleaved "
         f"({chosen.latency.runs} runs each); the report uses those figures")
    return EngineMeasurements(
        accuracy=Accuracy(evaluation.accuracy_reference, evaluation.accuracy_engine, evaluation.data),
        agreement=Agreement(**vars(evaluation.agreement)),
        fidelity=Fidelity.from_dict(fidelity_report(build_budget(context.config), evaluation,
                                                    f"the {artifact.precision} engine on this machine"
                                                    + (f" ({artifact.metadata['measured_where']})" if artifact.metadata.get("measured_where") else ""))),
        latency=LatencyFigures.measured(chosen.latency, where.summary),
        reference_latency=LatencyFigures.measured(fp32.latency, where.summary),
        speedup_vs_fp32=fp32.latency.p50 / chosen.latency.p50,
        measured_on=where,
        memory=memory,
        latency_samples={f"{artifact.precision} engine" if chosen is not fp32 else "fp32 engine": choice.latency_samples[chosen.name],
                         "fp32 reference": choice.latency_samples[fp32.name]},
    )


def measured_on_facts(profile: TargetProfile, artifact: EngineArtifact) -> MeasuredOn:
    """Every figure here comes from this host: which one, on what device, with which shared session settings."""
    from edgecompress.core.runtime import session_settings
    from edgecompress.measure.measured_on import measured_on

    ort_engine = artifact.kind in ("ort-cpu", "ort-arm")
    device = artifact.metadata.get("gpu") or artifact.metadata.get("measured_where") or "CPU"  # ExecuTorch: x86 XNNPACK
    return MeasuredOn.from_dict(measured_on(profile, device,
                                            session_settings(profile.threads) if ort_engine else None))


def check_int8_model(context: TargetContext, profile: TargetProfile, int8_path: Path) -> Int8ModelCheck:
    """What int8 does to the model on the device's arithmetic, when this host cannot run the device's engine.

    With graph optimizations off, ONNX Runtime computes Q/DQ in float: exact int8 rounding
    without the 16-bit saturation of x86 kernels lacking VNNI, i.e. what TensorRT and ARM
    kernels compute (the earlier 8×8 digits example: 100% agreement here and on emulated aarch64, 96.4%
    through this host's fused int8 kernels).
    """
    batch = _batch_size(context, 32)
    int8 = OrtRunner(int8_path, threads=profile.threads, level="disable")
    reference = OrtRunner(context.fp32.path, threads=profile.threads)
    evaluation = evaluate(int8, reference, context.eval_set, batch_size=batch, fidelity=fidelity_options(context.config))
    how = ("simulated int8: the QDQ model with Q/DQ computed in float (no host-kernel saturation); "
           "the device engine itself is measured on the device")
    return Int8ModelCheck(
        how=how,
        accuracy=SimulatedAccuracy(evaluation.accuracy_reference, evaluation.accuracy_engine, evaluation.data),
        agreement=Agreement(**vars(evaluation.agreement)),
        fidelity=Fidelity.from_dict(fidelity_report(
            build_budget(context.config), evaluation,
            "this host's ONNX Runtime simulation of the int8 model (Q/DQ in float), not the device")),
    )


def simulated_check(context: TargetContext, evaluation, validated_on: str, precision: str) -> Int8ModelCheck:
    """A device kit's figures: the shipped candidate's own evaluation on this host's simulation (precision.py's
    DeviceSimulation), taken from the ladder; nothing is evaluated twice."""
    how = (f"simulated {precision}: {validated_on}; the engine's fusions and kernel choices are not simulated, and the device "
           "engine itself is measured on the device")
    return Int8ModelCheck(
        how=how,
        accuracy=SimulatedAccuracy(evaluation.accuracy_reference, evaluation.accuracy_engine, evaluation.data),
        agreement=Agreement(**vars(evaluation.agreement)),
        fidelity=Fidelity.from_dict(fidelity_report(build_budget(context.config), evaluation, validated_on)),
    )


def model_facts(context: TargetContext) -> ModelFacts:
    return ModelFacts(
        name=context.source.name,
        source=context.config.model or "built-in digits example",
        inputs=[spec.to_dict() for spec in context.fp32.inputs],
        outputs=[spec.to_dict() for spec in context.fp32.outputs],
        opset=context.fp32.opset,
        labels=context.source.labels,
    )


def engine_facts(artifact: EngineArtifact) -> EngineFacts:
    size = artifact.path.stat().st_size if artifact.path else sum(p.stat().st_size for p in artifact.files if p.is_file())
    return EngineFacts(
        kind=artifact.kind,
        path=str(artifact.path) if artifact.path else None,
        precision=artifact.precision,
        precision_layers=artifact.precision_layers,
        size_bytes=size,
        files=[str(p) for p in artifact.files],
        runnable_here=artifact.runnable_here,
        note=artifact.note,
        metadata=artifact.metadata,
    )


def calibration_facts(calibration: CalibrationSet) -> CalibrationFacts:
    return CalibrationFacts(
        source=calibration.source,
        sha256=calibration.sha256,
        samples=len(calibration),
        manifest_verified=bool(calibration.manifest),
        made_from=calibration.manifest.get("source", {}).get("kind"),
        layout={"batch_axis": calibration.batch_layout.to_dict()},  # None: a scalar, one value for all
    )
