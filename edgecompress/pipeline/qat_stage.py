"""The ladder's quantization-aware rung: fine-tune where post-training int8 and repair missed the budget.

The fine-tuning itself is quantize/qat.py; this stage picks its inputs (--data's, labels not needed, else the
calibration set's), caches the result by content (the fp32 model, the calibration and training arrays, the recipe,
the options and the runtimes), and quantizes the fine-tuned graph with the ranges the training used. The caller
judges the result by the one budget, like every other candidate.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calib.load import CalibrationSet
from edgecompress.calib.manifest import arrays_sha256
from edgecompress.core.config import BuildConfig
from edgecompress.core.artifacts import sha256_file, sha256_json
from edgecompress.core.cache import cached_artifact
from edgecompress.core.errors import QuantizationError
from edgecompress.core.progress import info, progress_bar, warn
from edgecompress.quantize.qat import QatOptions, QuantPlan, finetune, fine_tuned_recipe, quantize_fine_tuned
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.quantize.static import prepare_model
from edgecompress.source.data import DigitsSplits as Splits
from edgecompress.source.layout import BatchLayout

FEW_TRAINING_INPUTS = 256  # below this, say that the fine-tuning sees little data


@dataclass(frozen=True)
class QatSources:
    """What the rung reads from the build: the pipeline's TargetContext, narrowed (this module sits below it)."""

    config: BuildConfig
    fp32_path: Path
    input_names: list[str]
    calibration: CalibrationSet
    labelled: Splits | None  # --data (or the compression data)


@dataclass(frozen=True)
class QatOutcome:
    model_path: Path  # the int8 QDQ model of the fine-tuned weights, quantized with the training's ranges
    record: dict[str, Any]  # report.json's quantization.qat (before the verdict on it)


def qat_options(context: QatSources) -> QatOptions:
    config = context.config
    return QatOptions(steps=config.qat_steps, lr=config.qat_lr, max_seconds=60.0 * config.qat_minutes, seed=config.seed,
                      learn_ranges=config.qat_ranges == "learned", augment=config.qat_augment,
                      patience=config.qat_patience)


def training_inputs(context: QatSources) -> tuple[dict[str, np.ndarray], BatchLayout, str]:
    """--data's training and validation splits for a one-input model (its labels are not used: the loss is
    distillation; the test split stays unseen, for the verdict), else the calibration set."""
    if context.labelled is not None and len(context.input_names) == 1 and len(context.labelled.train):
        x = np.concatenate([context.labelled.train.x, context.labelled.val.x])
        return {context.input_names[0]: x}, BatchLayout({}), f"{context.config.data} train and validation splits ({len(x)} inputs)"
    calibration = context.calibration
    if len(calibration) < FEW_TRAINING_INPUTS:
        warn(f"quantization-aware training uses the calibration set's {len(calibration)} inputs: few for fine-tuning; "
             "pass --data with more inputs of the kind the model sees (labels optional)")
    return calibration.arrays, calibration.batch_layout, f"{calibration.source} (the calibration set, {len(calibration)} inputs)"


def qat_stage(context: QatSources, recipe: QuantRecipe, post_training_int8: Path) -> QatOutcome:
    """Fine-tune under `recipe`'s fake quantization (mirroring `post_training_int8`, its QDQ model) and quantize the
    result with the same ranges; both cached by content."""
    import onnxruntime
    import torch

    if recipe.activations == "dynamic":
        raise QuantizationError(
            "quantization-aware training mirrors calibrated (static) activation ranges, and this recipe quantizes "
            "activations per call (dynamic int8 MatMuls)",
            "the ladder goes on to fp16/fp32; for a static int8 engine, build for a target whose engine runs Q/DQ "
            "(intel-cpu, TensorRT)",
        )
    config = context.config
    options = qat_options(context)
    inputs, layout, described = training_inputs(context)
    key = {
        "fp32": sha256_file(context.fp32_path), "calibration": context.calibration.sha256, "training": arrays_sha256(inputs),
        "recipe": recipe.cache_key(), "options": asdict(options), "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__, "stage": "qat-v3", "processes": config.qat_processes,
    }
    name = sha256_json(key)[:12]
    trained_path = config.out / "qat" / f"model.qat.{name}.onnx"

    def fine_tune(out: Path) -> dict[str, Any]:
        info(f"quantization-aware training: up to {options.steps} steps or {config.qat_minutes:g} min on {described}")
        with tempfile.TemporaryDirectory(prefix="edgecompress-qat-") as workdir, progress_bar() as progress:
            prepared = prepare_model(context.fp32_path, context.calibration, recipe, Path(workdir) / "prepared.onnx")
            if config.qat_processes > 1:  # torchrun: each process trains on its share of every batch
                from edgecompress.quantize.qat_ddp import run_job, write_job

                job = write_job(Path(workdir) / "job", prepared, post_training_int8, inputs, layout, recipe, options, out)
                result = run_job(job, config.qat_processes, timeout=options.max_seconds * 1.5 + 300)
            else:
                result = finetune(prepared, post_training_int8, inputs, layout, recipe, options, out, progress)
        return {
            "steps": result.steps, "seconds": result.seconds, "seconds_per_step": round(result.seconds_per_step, 3),
            "stopped": result.stopped, "data": described, "processes": config.qat_processes,
            "training_inputs": result.samples, "lr": options.lr, "batch_size": options.batch_size,
            "temperature": options.temperature, "loss": "distillation from the fp32 model (KL on class scores, MSE otherwise)",
            "ranges": "learned (LSQ)" if options.learn_ranges else "calibrated, frozen",
            "augmented": result.augmented,
            "validation_loss_before": round(result.validation_loss_before, 6),
            "validation_loss_after": round(result.validation_loss_after, 6),
            "curve": [{k: round(v, 6) for k, v in entry.items()} for entry in result.curve],
            "activations": result.plan.activation_record(),
        }

    record, reused = cached_artifact(trained_path, key, fine_tune)
    int8_path = config.out / "int8" / f"model.int8.qat.{name}.onnx"
    ranges = QuantPlan.from_activation_record(record["activations"]).activation_ranges()

    def quantize(out: Path) -> None:
        quantize_fine_tuned(trained_path, context.calibration, recipe, ranges, out)

    cached_artifact(int8_path, {**key, "quantized": fine_tuned_recipe(recipe).cache_key()}, quantize)
    info(f"quantization-aware training: {'reused' if reused else 'wrote'} {int8_path} "
         f"({record['steps']} steps, {record['seconds']} s, {record.get('seconds_per_step', 0):.2f} s/step, {record['stopped']})")
    return QatOutcome(int8_path, {k: v for k, v in record.items() if k != "activations"} | {"reused": reused})
