"""Build configuration: one typed model shared by the TOML file and the command line.

`--config FILE` supplies values, command-line options override them, and validation
names the offending key. Field descriptions double as `--help` text, so the documented
defaults cannot drift from the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecompress.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# The built-in example (`edgecompress build` with no --model) is this preset of options, laid under whatever the
# user sets, so every choice can be overridden and shows in report.json's `build.config` (presets/example.py trains
# its teacher). The numbers make int8 pay on a CPU and keep the first build near two minutes on 2 cores: cnn-wide
# (64-128-256 channels) loses a quarter of its channels in one step, to 48-96-192 — multiples of 16, which int8
# GEMM kernels tile without remainder, and still wide enough that int8 beats fp32 (a 50% cut to 32-64-128
# measured int8 at only 1.3x fp32).
EXAMPLE_OPTIONS: dict[str, Any] = {
    "data": "digits",
    "student": "cnn-wide",
    "prune": "channels",
    "prune_ratio": 0.25,
    "prune_steps": 1,
    "epochs": 4,
    "finetune_epochs": 2,
}


def with_example_options(values: dict[str, Any]) -> dict[str, Any]:
    """The example's options under `values` when they build the example (no model given)."""
    return values if values.get("model") not in (None, EXAMPLE_NAME) else EXAMPLE_OPTIONS | values


EXAMPLE_NAME = "digits-example"  # --model's name for the built-in example (also what it is called in reports)

# the task kinds measure.fidelity has a comparator for; the options validate --task against them
TASKS = ("classify", "detect", "segment", "sequence", "embed", "regress")
TASK_CHOICES = ("auto", *TASKS)

class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = Field(
        None, description="model: .onnx, TorchScript .pt, torch.export .pt2, package.module:factory, or a Hugging Face "
        "checkpoint folder (config.json + weights; text or vision transformer encoder); unset = the built-in digits example"
    )
    pooling: Literal["auto", "mean", "cls", "none"] = Field(
        "auto", description="output of a Hugging Face checkpoint: mean (mask-weighted mean of the tokens, text only) or "
        "cls (the first token), L2-normalised for text, or none (all hidden states); auto = a sentence-transformers "
        "folder's own pooling, the CLS token for vision encoders, else none"
    )
    weights: Path | None = Field(None, description="state_dict file for a package.module:factory model (weights_only load)")
    input_shape: list[str] = Field(
        default_factory=list, description="NAME:1,3,224,224 per input (NAME: may be left out for one input)"
    )
    batch_axis: list[str] = Field(
        default_factory=list, description="NAME:AXIS where an input's batch is not the axis the model marks "
        "(a dim_param shared by inputs, else axis 0), e.g. state:1"
    )
    target: list[str] = Field(default_factory=lambda: ["cpu"], description="target profile names or .toml paths")
    calib: Path | None = Field(None, description="calibration set .npz (keys = input names, each at batch N on its batch axis; 0-d = one value for all)")
    eval_data: Path | None = Field(
        None, description="held-out evaluation .npz (inputs by name or x, optional labels y); unset = the "
        "example's test split, or the calibration set for other models"
    )
    out: Path = Field(Path("build"), description="build folder")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="activation range calibration")
    percentile: float = Field(99.999, gt=0, le=100, description="percentile for calibration_method = percentile")
    per_channel: bool = Field(True, description="per-channel weight scales")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="fp32 node names to keep out of int8")
    opset: int = Field(18, ge=17, le=23, description="ONNX opset of the export")
    exporter: Literal["dynamo", "torchscript"] = Field("dynamo", description="torch.onnx exporter (falls back to torchscript)")
    export_tolerance: float = Field(1e-3, gt=0, description="max |ORT - PyTorch| relative to the output scale")
    bench_runs: int = Field(200, ge=10, description="timed runs per engine")
    bench_warmup: int = Field(20, ge=0, description="untimed warm-up runs per engine")
    bench_max_seconds: float = Field(20.0, gt=0, description="time limit of the timed runs per target")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="accuracy budget in top-1 points (compression vs teacher, int8 vs fp32)"
    )
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="budget without labels: fraction of samples whose top-1 must match fp32"
    )
    allow_over_budget: bool = Field(
        False, description="ship the best engine even when it misses the budget, exit 0 and say so (else exit 3)"
    )
    task: list[str] = Field(
        default_factory=lambda: ["auto"], description="task of the model's outputs, which picks the fidelity metric: "
        "auto (from each output's shape and values), classify (top-1), detect (F1 of boxes after NMS vs fp32), "
        "segment (pixel agreement, or mask IoU for one channel), sequence (CTC character error rate), embed (nearest-"
        "neighbour agreement of [N, D] embeddings; unset budget: also mean cosine 0.99, worst 0.97), regress (SQNR); "
        "OUTPUT=TASK for one output of several"
    )
    fidelity_budget: list[str] = Field(
        default_factory=list, description="budget in the task metric's own units: the least detection F1, mask IoU, "
        "pixel/step/top-1 agreement or SQNR dB, the most character error rate or top-1 points lost; OUTPUT=VALUE for one "
        "output; unset = the stated default per metric (F1 0.90, mask IoU 0.90, pixel agreement 98%, character "
        "error rate 0.02, SQNR 20 dB, top-1: 1 point with labels, else 99% agreement)"
    )
    detect_score_threshold: float = Field(0.25, gt=0, lt=1, description="detections: a box counts above this class score")
    detect_nms_iou: float = Field(0.45, gt=0, le=1, description="detections: NMS drops a box overlapping a better one of its class by more")
    detect_match_iou: float = Field(0.5, gt=0, le=1, description="detections: an engine box matches an fp32 box of its class from this IoU")
    ctc_blank: int = Field(0, ge=0, description="blank class of a CTC sequence output (sequence_decode = ctc)")
    sequence_decode: Literal["ctc", "steps"] = Field(
        "ctc", description="sequence outputs: ctc = character error rate of greedy CTC decoding, steps = per-step argmax agreement"
    )
    max_excluded_layers: int = Field(8, ge=0, description="most layers repair may keep in fp32")
    repair_strategy: Literal["bisect", "greedy"] = Field("bisect", description="how repair searches the sensitivity ranking")
    precision: Literal["auto", "int8", "fp32", "fp16"] = Field(
        "auto", description="engine precision; auto = the smallest candidate within the budget whose latency is within 10% of the fastest on the target's runner"
    )
    equalize: Literal["auto", "on", "off"] = Field(
        "auto", description="cross-layer equalization before int8; auto = on for per-tensor weights, where it measured to help"
    )
    bias_correction: Literal["auto", "on", "off"] = Field(
        "auto", description="move the mean int8 weight error of each layer into its bias; auto = on for coarse weights "
        "(reduce_range or per-tensor), where it measured to help, and repair tries the other setting; off = never"
    )
    diagnose: bool = Field(True, description="per-layer SQNR of the int8 model in report.json (quantization.layers)")
    qat: Literal["auto", "on", "off"] = Field(
        "auto", description="quantization-aware fine-tuning, distilled from the fp32 model, on --data's inputs (labels "
        "optional), else the calibration set's: auto = when repaired int8 misses the budget, on = after every repair, "
        "off = never (fp16/fp32 ship when repair misses)"
    )
    qat_steps: int = Field(300, ge=1, le=100_000, description="most fine-tuning steps of quantization-aware training")
    qat_minutes: float = Field(10.0, gt=0, description="time limit of quantization-aware fine-tuning per target")
    qat_processes: int = Field(1, ge=1, le=64, description="processes quantization-aware fine-tuning runs in (torchrun, "
                               "gloo): each trains on its share of every batch, the cores split between them; for hosts "
                               "with more than one socket")
    qat_patience: int = Field(4, ge=1, le=1000, description="stop quantization-aware fine-tuning after this many "
                              "validations in a row without a lower validation loss (one every 25 steps)")
    qat_lr: float = Field(1e-5, gt=0, lt=1, description="Adam learning rate of quantization-aware fine-tuning")
    qat_ranges: Literal["calibrated", "learned"] = Field(
        "calibrated", description="activation ranges during quantization-aware fine-tuning: calibrated = the post-training "
        "ones, frozen; learned = trained with the weights (LSQ), and the engine is quantized with the learned ones"
    )
    qat_augment: bool = Field(
        True, description="quantization-aware fine-tuning trains on random views of image inputs (crops, zoom, mirror, "
        "colour), each labelled by the fp32 model: a few hundred images then generalise to other images"
    )
    seed: int = Field(0, description="seed for every random choice")
    # compression (PyTorch models only): distillation, pruning and the accuracy gate
    data: str | None = Field(
        None, description="labelled data for compression: digits, an image folder DIR/<class>/<image>, or .npz with "
        "x and y (y optional when distill_alpha = 0); unset = digits for the built-in example"
    )
    teacher: str | None = Field(
        None, description="teacher for distillation: zoo name, package.module:factory or a saved .pt module; "
        "unset = the --model itself"
    )
    student: str | None = Field(
        None, description="student to distil and ship: zoo name or package.module:factory; none = keep the model; "
        f"unset = {EXAMPLE_OPTIONS['student']} for the built-in example, none otherwise"
    )
    prune: Literal["none", "magnitude", "taylor", "channels"] | None = Field(
        None, description="pruning: channels (structured, faster engines), magnitude/taylor (unstructured zeros); "
        "unset = channels for the built-in example, none otherwise"
    )
    prune_ratio: float = Field(0.5, ge=0, lt=1, description="most to prune: fraction of channels or weights"
                               f" (built-in example: {EXAMPLE_OPTIONS['prune_ratio']})")
    prune_steps: int = Field(2, ge=1, le=20, description="prune -> fine-tune -> evaluate steps towards prune_ratio"
                             f" (built-in example: {EXAMPLE_OPTIONS['prune_steps']})")
    channel_importance: Literal["l1", "taylor"] = Field("l1", description="channel ranking for --prune channels")
    epochs: int = Field(8, ge=1, le=1000, description=f"distillation epochs of the student (built-in example: {EXAMPLE_OPTIONS['epochs']})")
    finetune_epochs: int = Field(2, ge=1, le=1000, description="fine-tuning epochs after each prune step")
    distill_alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss (1 - alpha: teacher's soft targets)")
    distill_temperature: float = Field(4.0, gt=0, description="softmax temperature of the soft targets")
    distill_features: list[str] = Field(
        default_factory=list, description="feature distillation pairs student_layer=teacher_layer"
    )

    @model_validator(mode="before")
    @classmethod
    def _builtin_example(cls, values: Any) -> Any:
        """No --model: the built-in example's options lie under what was given (CLI, config file or Python)."""
        return with_example_options(dict(values)) if isinstance(values, dict) else values

    @field_validator("target", "input_shape", "batch_axis", "nodes_to_exclude", "distill_features", "task", "fidelity_budget", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value

    @field_validator("task")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.rpartition("=")[2] not in TASK_CHOICES:
                raise ValueError(f"task '{item}' is not one of {', '.join(TASK_CHOICES)} (or OUTPUT=TASK)")
        return value

    @field_validator("fidelity_budget", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        items = [str(item) for item in (value if isinstance(value, (list, tuple)) else [value])]
        for item in items:
            try:
                float(item.rpartition("=")[2])
            except ValueError:
                raise ValueError(f"fidelity budget '{item}' is not a number (or OUTPUT=NUMBER)") from None
        return items


def describe(key: str) -> str:
    """Help text for a config key: its description and its default."""
    field = BuildConfig.model_fields[key]
    default = field.get_default(call_default_factory=True)
    if default is None:
        shown = "unset"
    elif isinstance(default, list):
        shown = ", ".join(map(str, default)) or "none"
    else:
        shown = str(default)
    choices = _literal_choices(field.annotation)
    one_of = f"; one of {', '.join(choices)}" if choices else ""
    return f"{field.description}{one_of} (default: {shown})"


def _literal_choices(annotation: Any) -> list[str]:
    """The strings a Literal (or an Optional Literal) allows, so the help lists them."""
    return [choice for arg in get_args(annotation)
            for choice in ([arg] if isinstance(arg, str) else _literal_choices(arg))]


def read_config_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "check the --config path")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", "fix its syntax") from exc
    return {key.replace("-", "_"): value for key, value in data.items()}


def make_config(file_values: dict[str, Any], overrides: dict[str, Any], where: str = "config") -> BuildConfig:
    """Validate file values overlaid with command-line overrides (None = not given)."""
    values = dict(file_values) | {key: value for key, value in overrides.items() if value not in (None, [], ())}
    try:
        return BuildConfig.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(config)"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"'{key}': {error['msg']} (got {error.get('input')!r})")
        raise ConfigError(
            f"{where}: {'; '.join(problems)}",
            f"valid keys: {', '.join(BuildConfig.model_fields)} (see `edgecompress build --help`)",
        ) from exc


def load_config(path: Path | None, overrides: dict[str, Any]) -> BuildConfig:
    file_values = read_config_file(path) if path else {}
    return make_config(file_values, overrides, where=str(path) if path else "options")
