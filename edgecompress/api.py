"""The public Python API: `edgecompress.build(model, calib=loader)` from the session that holds the model and data.

Users of NNCF write `nncf.quantize(model, nncf.Dataset(loader, transform_fn))`: the model and the data are already
in memory, and saving them to files for a command line is friction. `build` takes them as they are and runs the same
BUILD_STEPS and per-target build as `edgecompress build`, so the cache keys are the ones the CLI computes for the same
weights and arrays (an in-memory module is keyed by `module_hash`, arrays by `arrays_sha256`) and the reports are the
same report.json dicts. Every option is a BuildConfig field, validated there: the CLI's flags come from the same fields.

The one-step functions (`export_onnx`, `quantize_int8`, `make_calibration`, `bundle`, `release`, `ship_bundle`) are
for users who want one stage's file or action, not a whole build: each calls the code the CLI runs for that step (the
pipeline's steps, with the same cache keys, or the ship functions), so their files are the ones a build or a command
would write.

Nothing heavy is imported at module level (`import edgecompress` stays fast): torch, numpy and the pipeline load
on the first call.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

    from edgecompress.calib.batches import InMemoryData
    from edgecompress.calib.load import CalibrationSet
    from edgecompress.core.config import BuildConfig
    from edgecompress.core.targets import TargetProfile
    from edgecompress.engines.base import Runner
    from edgecompress.export.graph import OnnxModelInfo
    from edgecompress.pipeline.pipeline import BuildContext, StepRun
    from edgecompress.quantize.recipe import QuantRecipe
    from edgecompress.ship.bundle import BundleArtifact
    from edgecompress.ship.release import ReleaseArtifact
    from edgecompress.ship.transport import HostResult
    from edgecompress.source.layout import BatchLayout
    from edgecompress.source.model import SourceModel

CALIB_COUNT = 512  # calibration samples kept from an in-memory source (the rest of a DataLoader is not read)
# keywords of `build` that are not BuildConfig fields: they say how to read in-memory data and modules
API_OPTIONS = ("calib_count", "example_input")
IN_MEMORY_MODEL = "in-memory torch.nn.Module"
# the BuildConfig fields each one-step function takes as **options (every one documented from the field, as build's)
EXPORT_OPTIONS = ("weights", "pooling", "batch_axis", "opset", "exporter", "export_tolerance")
QUANTIZE_OPTIONS = ("batch_axis", "calibration_method", "percentile", "per_channel", "nodes_to_exclude", "equalize",
                    "bias_correction")
SELFTEST_SAMPLES = 4  # bundle's and release's sample inputs: the CLI's --samples default (ship/bundle.py's, tested)
SSH_TIMEOUT = 15.0  # ship_bundle's: the CLI's --timeout and SshOptions' default (tested)
REMOTE_PYTHON = "python3"  # ship_bundle's: the CLI's --remote-python default (tested)


def build(model: Any, *, calib: Any, eval_data: Any = None, targets: Sequence[str] = ("cpu",), out: str | Path = "build",
          input_shape: Any = None, transform_fn: Callable[[Any], Any] | None = None, progress: bool = True,
          **options: Any) -> BuildResult:
    """Build verified, benchmarked engines for `targets` from a model and data in this Python session.

    Args:
        model: a torch.nn.Module, an ONNX file path or onnx.ModelProto, or any model string `edgecompress build
            --model` takes (package.module:factory, a checkpoint folder, a .pt2); None builds the built-in example.
        calib: calibration data: a numpy array, a dict of arrays by input name, a torch Tensor, a DataLoader or any
            iterable of batches (a tensor, an (x, y) pair or a dict), or the path of a calibration .npz.
        eval_data: held-out data in the same forms; 1-D integer labels (`y` of an (x, y) batch) measure accuracy.
        targets: target profile names or .toml paths.
        out: the build folder.
        input_shape: a module's example input shape ("1,3,32,32", "NAME:1,3,32,32", a tuple, or a dict by name);
            unset: the first calibration sample's shape at batch 1 (or the `example_input` option's).
        transform_fn: batch -> the model's input(s) (a tensor, a tuple in forward's order or a dict by input name),
            as nncf.Dataset's transform_fn.
        progress: False silences progress bars and info lines (warnings still show).
        **options: any BuildConfig field listed under Options (max_accuracy_drop=1.0, precision="int8", qat="off",
            bench_runs=50, ...), `calib_count` (most calibration samples kept, default 512) and `example_input` (a
            module's example input).

    Returns the BuildResult of every target; errors are EdgecompressError subclasses carrying the fix.
    """
    calib_count = options.pop("calib_count", CALIB_COUNT)
    example_input = options.pop("example_input", None)
    config = _config(model, calib, eval_data, targets, out, input_shape, options)
    with _progress_shown(progress):
        calibration = _in_memory(calib, transform_fn, config, calib_count, "calib")
        held_out = _in_memory(eval_data, transform_fn, config, None, "eval_data")
        source, config = _source(model, config, example_input, calibration)
        reports = _run(config, source, calibration, held_out)
    return BuildResult.from_reports(reports, config.out)


def _options_section(function: Callable[..., Any], names: Sequence[str] | None = None) -> str:
    """The Options section of `function`, generated from the BuildConfig fields its `**options` takes (`names`; None:
    every field that is not a parameter), in the words of `edgecompress build --help` (`describe`): help() documents
    every option and cannot drift."""
    import inspect
    import textwrap

    from edgecompress.core.config import BuildConfig, describe

    parameters = inspect.signature(function).parameters
    lines = ["    Options:"]
    for name, config_field in BuildConfig.model_fields.items():
        # not a parameter (model, calib, eval_data, out, input_shape: under Args, in their Python forms)
        if name not in parameters and (names is None or name in names):
            entry = f"{name} ({_type_name(config_field.annotation)}): {describe(name)}"
            lines += textwrap.wrap(entry, 120, initial_indent=" " * 8, subsequent_indent=" " * 12,
                                   break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def _with_options_documented(function: Callable[..., Any], names: Sequence[str] | None = None) -> None:
    function.__doc__ = f"{(function.__doc__ or '').rstrip()}\n\n{_options_section(function, names)}\n"


def _type_name(annotation: Any) -> str:
    """A field's type as a user writes it: `float | None`, `list[str]`, `Path`; a Literal is its choices' type."""
    import types
    from typing import Literal, Union, get_args, get_origin

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(choice).__name__ for choice in args))
    if origin in (Union, types.UnionType):
        return " | ".join(dict.fromkeys(_type_name(arg) for arg in args))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


_with_options_documented(build)  # pydantic only: torch and numpy still load on first build


# --- options -> BuildConfig ------------------------------------------------------------------------------------------


def _config(model: Any, calib: Any, eval_data: Any, targets: Sequence[str], out: str | Path, input_shape: Any,
            options: dict[str, Any], known: Sequence[str] | None = None, where: str = "edgecompress.build()") -> BuildConfig:
    """Keywords -> the one BuildConfig, validated by it: a wrong name or value fails before any work. `known`: the
    option names `where` takes (None: build's, every field)."""
    from edgecompress.core.config import make_config

    _check_option_names(options, known, where)
    values = {
        "model": _model_string(model, Path(out)),
        "target": [targets] if isinstance(targets, str) else list(targets),
        "out": Path(out),
        "input_shape": _shape_specs(input_shape),
        "calib": _path_or_none(calib),
        "eval_data": _path_or_none(eval_data),
    }
    return make_config({}, values | options, where=where)


def _check_option_names(options: Mapping[str, Any], known: Sequence[str] | None = None,
                        where: str = "edgecompress.build()") -> None:
    """A misspelt keyword names the closest real ones instead of being ignored or failing deep in pydantic."""
    import difflib

    from edgecompress.core.config import BuildConfig
    from edgecompress.core.errors import ConfigError

    known = list(known) if known is not None else [*BuildConfig.model_fields, *API_OPTIONS]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise ConfigError(f"{where} has no option '{name}'",
                              f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                              else f"valid options: {', '.join(known)}")


def _path_or_none(data: Any) -> Path | None:
    return Path(data) if isinstance(data, (str, Path)) else None


def _model_string(model: Any, out: Path) -> str | None:
    """What report.json's `model.source` and the config say: the path or model string, or what the object is."""
    if model is None or isinstance(model, (str, Path)):
        return None if model is None else str(model)
    if _is_module(model):
        return f"{type(model).__name__} ({IN_MEMORY_MODEL})"
    if _is_model_proto(model):
        return str(out / "source.onnx")
    from edgecompress.core.errors import ModelLoadError

    raise ModelLoadError(f"cannot build from a {type(model).__name__}",
                         "pass a torch.nn.Module, an ONNX path or onnx.ModelProto, or a model string the CLI takes")


def _shape_specs(input_shape: Any) -> list[str]:
    """The CLI's NAME:1,3,224,224 strings from a string, a tuple of ints, a list of either, or a dict by name."""
    if input_shape is None:
        return []
    if isinstance(input_shape, str):
        return [input_shape]
    if isinstance(input_shape, Mapping):
        return [f"{name}:{_dims(shape)}" for name, shape in input_shape.items()]
    items = list(input_shape)
    if items and all(isinstance(item, int) for item in items):  # [] is BuildConfig's default: no shapes, not one empty
        return [_dims(items)]
    return [item if isinstance(item, str) else _dims(item) for item in items]


def _dims(shape: Iterable[int]) -> str:
    return ",".join(str(int(d)) for d in shape)


@contextmanager
def _progress_shown(shown: bool) -> Iterator[None]:
    from edgecompress.core import progress

    before = progress.quiet
    progress.quiet = before or not shown
    try:
        yield
    finally:
        progress.quiet = before


def _is_module(model: Any) -> bool:
    torch = sys.modules.get("torch")  # a user holding a module has imported torch; others need not pay for it
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_model_proto(model: Any) -> bool:
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


def _is_exported(model: Any) -> bool:
    graph = sys.modules.get("edgecompress.export.graph")  # whoever holds an export_onnx result has loaded it
    return graph is not None and isinstance(model, graph.OnnxModelInfo)


# --- in-memory data ---------------------------------------------------------------------------------------------------


def _in_memory(data: Any, transform_fn: Callable[[Any], Any] | None, config: BuildConfig, limit: int | None,
               what: str) -> InMemoryData | None:
    """Data held in memory, read now (calib/batches.py); a file is None here: the pipeline reads it, as the CLI's."""
    if data is None or isinstance(data, (str, Path)):
        return None
    from edgecompress.calib.batches import read_batches

    return read_batches(data, transform_fn, _layout(config), limit, what)


def _layout(config: BuildConfig) -> BatchLayout:
    from edgecompress.source.layout import BatchLayout, parse_batch_axes

    axes: dict[str, int | None] = dict(parse_batch_axes(config.batch_axis))
    return BatchLayout(axes)


# --- model -> SourceModel --------------------------------------------------------------------------------------------


def _source(model: Any, config: BuildConfig, example_input: Any,
            calibration: InMemoryData | None) -> tuple[SourceModel | None, BuildConfig]:
    """An in-memory module as the pipeline's SourceModel (None: the load step reads config.model, as the CLI's)."""
    if _is_model_proto(model):
        _save_model_proto(model, Path(str(config.model)))
        return None, config
    if not _is_module(model):
        return None, config
    from edgecompress.core.cache import module_hash
    from edgecompress.source.layout import parse_batch_axes
    from edgecompress.source.model import SourceModel

    shapes, dtypes = _module_inputs(config, example_input, calibration)
    specs = [f"{name}:{_dims(shape)}" for name, shape in shapes.items()]
    source = SourceModel(type(model).__name__, module_hash(model), module=model, input_shapes=shapes,
                         batch_axes=parse_batch_axes(config.batch_axis), input_dtypes=dtypes)
    return source, config.model_copy(update={"input_shape": specs})  # report.json records the shapes exported


def _save_model_proto(model: Any, path: Path) -> None:
    import onnx

    from edgecompress.core.artifacts import atomic_path

    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def _module_inputs(config: BuildConfig, example_input: Any,
                   calibration: InMemoryData | None) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(input shapes, non-float32 dtypes): from input_shape, else example_input, else the first calibration sample."""
    from edgecompress.core.errors import InputShapeError
    from edgecompress.source.model import _torch_shapes, parse_input_shapes

    example = _in_memory(example_input, None, config, None, "example_input") if example_input is not None else None
    data = example or calibration
    if config.input_shape:
        shapes = _torch_shapes(parse_input_shapes(config.input_shape), str(config.model))
    elif data is not None:
        shapes = _sample_shapes(data, config, batch_one=example is None)
    elif config.calib is not None:
        shapes = _npz_sample_shapes(config.calib, config)
    else:
        raise InputShapeError(f"{config.model} needs an example input shape to export",
                              "pass input_shape=(1, 3, 224, 224) or example_input=tensor (build also reads it from "
                              "in-memory calib data)")
    dtypes = {} if data is None else {name: str(array.dtype) for name, array in zip(shapes, data.inputs.values())
                                      if array.dtype.kind in "iub"}  # token ids and masks are exported as such
    return shapes, dtypes


def _sample_shapes(data: InMemoryData, config: BuildConfig, batch_one: bool) -> dict[str, tuple[int, ...]]:
    """Each input's shape, at batch 1 on its batch axis; positional inputs get the CLI's names (input, input1, ...)."""
    layout = _layout(config)
    names = [f"input{i if i else ''}" for i in range(len(data.inputs))] if data.positional else list(data.inputs)
    shapes = {}
    for name, array in zip(names, data.inputs.values()):
        shape, axis = list(array.shape), layout.axis(name, array)
        if batch_one and axis is not None:
            shape[axis] = 1
        shapes[name] = tuple(shape)
    return shapes


def _npz_sample_shapes(path: Path, config: BuildConfig) -> dict[str, tuple[int, ...]]:
    from edgecompress.calib.batches import InMemoryData
    from edgecompress.calib.load import LABEL_KEYS, read_array_file

    arrays = {key: array for key, array in read_array_file(Path(path)).items() if key not in LABEL_KEYS}
    return _sample_shapes(InMemoryData(arrays, len(arrays) == 1, None, str(path)), config, True)  # one array: "input"


# --- the build --------------------------------------------------------------------------------------------------------


def _run(config: BuildConfig, source: SourceModel | None, calibration: InMemoryData | None,
         held_out: InMemoryData | None) -> list[dict[str, Any]]:
    """pipeline.build with the module, calibration and evaluation sets given here in place of their steps' files."""
    from edgecompress.pipeline.pipeline import BuildContext, build

    return build(config, BuildContext(config, source=source), _replacements(source, calibration, held_out))


def _steps(config: BuildConfig, source: SourceModel | None, calibration: InMemoryData | None, runs: list[StepRun],
           exported: OnnxModelInfo | None = None) -> BuildContext:
    """A few of the build's steps (a one-step function's), with the same replacements as `_run`'s."""
    from edgecompress.pipeline.pipeline import BuildContext, run_steps

    return run_steps(BuildContext(config, source=source), runs, _replacements(source, calibration, None, exported))


def _replacements(source: SourceModel | None, calibration: InMemoryData | None, held_out: InMemoryData | None,
                  exported: OnnxModelInfo | None = None) -> dict[StepRun, StepRun]:
    """Step -> what runs in its place: the module, fp32 ONNX, calibration and evaluation sets given here, not made
    from files."""
    from edgecompress.pipeline.pipeline import calibration_step, eval_step, export_step, load_step

    replaced: dict[StepRun, StepRun] = {}
    if source is not None:
        replaced[load_step] = lambda context: context
    if exported is not None:  # export_onnx's result: the export step has run (re-preparing it would be a no-op)
        replaced[export_step] = lambda context: replace(context, fp32=exported)
    if calibration is not None:
        replaced[calibration_step] = lambda context: _with_calibration(context, calibration)
    if held_out is not None:
        replaced[eval_step] = lambda context: _with_eval_set(context, held_out)
    return replaced


def _fitted(context: BuildContext, data: InMemoryData) -> CalibrationSet:
    """The arrays checked against the exported model's inputs, as a calibration .npz is (same sha256 for same arrays)."""
    from edgecompress.calib.load import calibration_set_from_arrays

    fp32 = context.fp32
    assert fp32 is not None, "the export step runs before calibration and evaluation"
    arrays = data.named([spec.name for spec in fp32.inputs])
    return replace(calibration_set_from_arrays(arrays, fp32.inputs, data.source, fp32.layout), labels=data.labels)


def _with_calibration(context: BuildContext, data: InMemoryData) -> BuildContext:
    from edgecompress.pipeline.pipeline import warn_calibration_findings

    calibration = _fitted(context, data)
    warn_calibration_findings(calibration)
    return replace(context, calibration=calibration)


def _with_eval_set(context: BuildContext, data: InMemoryData) -> BuildContext:
    from edgecompress.measure.evaluate import EvalSet

    held_out = _fitted(context, data)
    return replace(context, eval_set=EvalSet(held_out.arrays, held_out.labels, f"{data.source} (held out)", held_out.layout))


# --- one step at a time -----------------------------------------------------------------------------------------------


def export_onnx(model: Any, *, input_shape: Any = None, out: str | Path = "build", example_input: Any = None,
                progress: bool = True, **options: Any) -> OnnxModelInfo:
    """The checked fp32 ONNX file alone, for users who quantize, inspect or deploy it themselves.

    It is `build`'s export step with its cache key (no distillation or pruning: that is `build`), so a later `build` of
    the same model into the same `out` reuses the file, and so does `quantize_int8`.

    Args:
        model: a torch.nn.Module, an ONNX file path or onnx.ModelProto (prepared as a build prepares one: opset,
            open dimensions fixed, simplified, every node named), or any model string `edgecompress build --model`
            takes.
        input_shape: a module's example input shape ("1,3,32,32", "NAME:1,3,32,32", a tuple, or a dict by name);
            unset: `example_input`'s shapes as given.
        out: the build folder: the file is OUT/model.fp32.onnx.
        example_input: a module's example input (a tensor, an array, a tuple in forward's order or a dict by name),
            read for its shapes and integer dtypes.
        progress: False silences info lines (warnings still show).
        **options: the BuildConfig fields listed under Options.

    Returns:
        The file's path, input and output specs and opset, and for a torch model the largest |ONNX Runtime - PyTorch|
        difference of the check (an export past `export_tolerance` raises ExportError instead).
    """
    from edgecompress.pipeline.pipeline import export_step, load_step

    config = _config(model, None, None, ("cpu",), out, input_shape, options, EXPORT_OPTIONS, "edgecompress.export_onnx()")
    with _progress_shown(progress):
        source, config = _source(model, config, example_input, None)
        fp32 = _steps(config, source, None, [load_step, export_step]).fp32
    assert fp32 is not None, "the export step fills fp32"
    return fp32


_with_options_documented(export_onnx, EXPORT_OPTIONS)


def quantize_int8(onnx_model: Any, *, calib: Any, target: str = "cpu", out: str | Path = "build", input_shape: Any = None,
                  transform_fn: Callable[[Any], Any] | None = None, calib_count: int = CALIB_COUNT, progress: bool = True,
                  **options: Any) -> QuantizeResult:
    """The int8 QDQ ONNX file of the target's recipe, post-training only, for users who build engines themselves.

    The recipe is the one `build` starts its ladder from (the target's ISA, the options, what int8 cannot take kept
    fp32) and the file is the build's first int8 candidate, under the same cache key. Nothing is evaluated and
    nothing repaired: a budget, repair, QAT and the engine are `build`'s.

    Args:
        onnx_model: `export_onnx`'s result (used as it is: the chain for a torch module), or an fp32 ONNX file path
            or onnx.ModelProto, prepared as `build` prepares one into OUT/model.fp32.onnx.
        calib: calibration data in the forms `build` takes: a numpy array, a dict of arrays by input name, a torch
            Tensor, a DataLoader or any iterable of batches, or the path of a calibration .npz.
        target: the target profile (name or .toml path) whose recipe quantizes; not one whose engine is built from
            the torch module (ExecuTorch).
        out: the build folder: the file is `OUT/int8/model.int8.KEY.onnx` (KEY: the content hash of its inputs).
        input_shape: sizes for the model's open dimensions ("NAME:1,3,224,224", a tuple, or a dict by name).
        transform_fn: batch -> the model's input(s), as `build`'s.
        calib_count: most calibration samples kept from in-memory data.
        progress: False silences info lines (warnings still show).
        **options: the BuildConfig fields listed under Options.

    Returns:
        The int8 file's path, the recipe that made it and the target's name.
    """
    from edgecompress.engines import checked_profiles
    from edgecompress.pipeline.pipeline import calibration_step, export_step, load_step, quantize_stage, target_recipe

    exported = onnx_model if _is_exported(onnx_model) else None
    model = onnx_model if exported is None else exported.path
    _check_onnx_model(model, "edgecompress.quantize_int8()")
    config = _config(model, calib, None, (target,), out, input_shape, options, QUANTIZE_OPTIONS,
                     "edgecompress.quantize_int8()")
    (profile,) = checked_profiles(config.target)  # a mistyped target fails before any work
    _check_onnx_engine(profile)
    with _progress_shown(progress):
        calibration = _in_memory(calib, transform_fn, config, calib_count, "calib")
        source, config = _source(model, config, None, calibration)
        context = _steps(config, source, calibration, [load_step, export_step, calibration_step], exported)
        assert context.fp32 is not None and context.calibration is not None, "export and calibration steps fill them"
        recipe = target_recipe(profile, config, context.fp32.path)
        path = quantize_stage(config.out, context.fp32.path, context.calibration, recipe)
    return QuantizeResult(path, recipe, profile.name)


_with_options_documented(quantize_int8, QUANTIZE_OPTIONS)


def _check_onnx_model(model: Any, where: str) -> None:
    """An ONNX file or ModelProto: a torch module is exported first (its shapes and check are export's business)."""
    if _is_model_proto(model) or (isinstance(model, (str, Path)) and Path(model).suffix == ".onnx"):
        return
    from edgecompress.core.errors import ModelLoadError

    raise ModelLoadError(f"{where} takes an fp32 ONNX file or onnx.ModelProto, not {_what(model)}",
                         "export a torch model first: edgecompress.export_onnx(model, input_shape=...).path")


def _what(model: Any) -> str:
    return f"'{model}'" if isinstance(model, (str, Path)) else f"a {type(model).__name__}"


def _check_onnx_engine(profile: TargetProfile) -> None:
    """ExecuTorch quantizes the torch module itself (PT2E): no ONNX recipe makes its engine."""
    from edgecompress.core.errors import TargetError
    from edgecompress.engines import get_builder
    from edgecompress.engines.base import engine_input

    if engine_input(get_builder(profile.engine)) == "torch":
        raise TargetError(f"target '{profile.name}' builds its {profile.engine} engine from the torch module, not from "
                          "an int8 ONNX file",
                          f"build it with edgecompress.build(module, calib=..., targets=['{profile.name}'])")


def make_calibration(source: str | Path | None = None, *, out: str | Path, count: int | None = None,
                     seed: int | None = None, recipe: str | Path | None = None, size: int | None = None,
                     resize: int | Sequence[int] | None = None, crop: int | Sequence[int] | None = None,
                     color: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     layout: str | None = None, input_name: str | None = None, model: str | Path | None = None,
                     weights: str | Path | None = None, input_shape: Any = None, data_free: bool = False,
                     steps: int | None = None, class_loss: float = 1.0, text: str | Path | None = None,
                     tokenizer: str | Path | None = None, max_length: int | None = None, progress: bool = True) -> Path:
    """Write a calibration set (.npz + manifest .json beside it) that every build and target can reuse.

    What `edgecompress calib` does, with its options as keywords (the command calls this function): a set made once
    is named by its sha256 in every report, and builds that read it share their int8 cache.

    Args:
        source: 'digits', a folder of JPEG/PNG images (class sub-folders = labels) or a .npy/.npz file (`--from`).
        out: the set's .npz path; the manifest goes beside it (.json).
        count: samples in the set (default 128; data_free: 32; text: the first N lines, default all).
        seed: seed of the stratified draw (default 0; text: draw the lines at random instead of taking the first N).
        recipe: a calibration recipe TOML (calibration/); the keywords override it.
        size: resize the shorter side to S, then center-crop S×S.
        resize: shorter side S, or exact (H, W).
        crop: center crop S or (H, W).
        color: "rgb" or "grayscale" (default rgb; digits: grayscale).
        mean: per-channel mean after scaling to [0, 1], e.g. (0.485, 0.456, 0.406).
        std: per-channel std after scaling to [0, 1], e.g. (0.229, 0.224, 0.225).
        layout: "NCHW" or "NHWC" (default NCHW).
        input_name: the array's key in the .npz (default x, or the model's input name).
        model: a model string as `--model` takes, to check the set against (.onnx: shapes; PyTorch: BatchNorm
            statistics); the source of data_free (unset there: the built-in digits example).
        weights: state_dict for a package.module:factory model.
        input_shape: the model's input shape ("1,3,224,224", a tuple, or a dict by name).
        data_free: synthesize inputs that match the model's BatchNorm statistics (range-only without BatchNorm).
        steps: data_free: optimization steps per batch of 32 (default: by the model's input size).
        class_loss: data_free: weight of the loss that makes each sample confidently one class (0 for outputs that
            are not class scores).
        text: UTF-8 text, one sentence or passage per line: writes the token arrays the tokenizer names.
        tokenizer: text: a local Hugging Face tokenizer folder (never downloaded).
        max_length: text: tokens per row, padded and truncated to it.
        progress: False silences the info line (warnings still show).

    Returns:
        The .npz path written.
    """
    from edgecompress.calib.manifest import check_out_path
    from edgecompress.core.progress import info

    out = check_out_path(Path(out))
    shapes = _shape_specs(input_shape)
    overrides = _preprocess_overrides(size, resize, crop, color, mean, std, layout)
    fields = _calibration_fields(source, count, seed, recipe, input_name, overrides)
    with _progress_shown(progress):
        if text is not None or tokenizer is not None or max_length is not None:
            conflicting = {"--from": source, "--recipe": recipe, "--data-free": data_free, "--steps": steps,
                           "--input-name": input_name, **overrides}
            made = _text_set(text, tokenizer, max_length, count, seed, [option for option, value in conflicting.items() if value],
                             model, weights, shapes, out)
        elif data_free:
            made = _data_free_set(fields, model, weights, shapes, steps, class_loss, out)
        else:
            made = _drawn_set(fields, model, weights, shapes, out)
        info(f"wrote {out} ({made.manifest['count']} samples, sha256 {made.sha256[:12]}) and {out.with_suffix('.json')}")
    return out


def _calibration_fields(source: str | Path | None, count: int | None, seed: int | None, recipe: str | Path | None,
                        input_name: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The set's recipe fields: a recipe TOML's, overridden by the keywords given (preprocessing ones over the
    source's default preprocessing)."""
    from edgecompress.calib.generate import load_recipe

    fields: dict[str, Any] = load_recipe(Path(recipe)).model_dump(exclude_unset=True) if recipe else {}
    given = {"source": None if source is None else str(source), "count": count, "seed": seed, "input_name": input_name}
    fields.update({key: value for key, value in given.items() if value is not None})
    if overrides:
        fields["preprocess"] = {**(fields.get("preprocess") or _default_preprocess(fields.get("source"))), **overrides}
    return fields


def _drawn_set(fields: dict[str, Any], model: str | Path | None, weights: str | Path | None, input_shape: list[str],
               out: Path) -> CalibrationSet:
    from edgecompress.calib.generate import make_calibration_set, make_recipe
    from edgecompress.core.errors import ConfigError

    if not fields.get("source"):
        raise ConfigError("no calibration source given", "pass --from DIR|FILE.npz|digits, --recipe FILE or --data-free")
    source_model = _calibration_model(model, weights, input_shape) if model else None
    fields.setdefault("input_name", _single_input_name(source_model))
    return make_calibration_set(make_recipe(fields), out, source_model)


def _text_set(text: str | Path | None, tokenizer: str | Path | None, max_length: int | None, count: int | None,
              seed: int | None, conflicting: list[str], model: str | Path | None, weights: str | Path | None,
              input_shape: list[str], out: Path) -> CalibrationSet:
    from edgecompress.calib.text import make_text_calibration_set
    from edgecompress.core.errors import ConfigError

    if conflicting:
        raise ConfigError(f"--text makes a set from text lines; {', '.join(conflicting)} do not apply to it",
                          f"drop {', '.join(conflicting)}, or drop --text, --tokenizer and --max-length")
    if text is None or tokenizer is None or max_length is None:
        missing = [option for option, value in (("--text", text), ("--tokenizer", tokenizer), ("--max-length", max_length))
                   if value is None]
        raise ConfigError(f"a text calibration set needs {', '.join(missing)} too",
                          "pass --text FILE --tokenizer DIR --max-length N")
    source_model = _calibration_model(model, weights, input_shape) if model else None
    return make_text_calibration_set(Path(text), Path(tokenizer), max_length, out, count, seed, source_model)


def _data_free_set(fields: dict[str, Any], model: str | Path | None, weights: str | Path | None, input_shape: list[str],
                   steps: int | None, class_loss: float, out: Path) -> CalibrationSet:
    from edgecompress.calib.datafree import DataFreeConfig, make_data_free_set, single_input, synthesis_module
    from edgecompress.calib.generate import make_recipe
    from edgecompress.core.errors import ConfigError

    if fields.get("source"):
        raise ConfigError("--data-free makes inputs from the model, not from --from", "drop --from, or drop --data-free")
    source_model = _calibration_model(model, weights, input_shape)
    synthesis_module(source_model)  # a TorchScript model or an ONNX op the runner lacks fails here, before the shape question
    name, shape = single_input(source_model)
    spec = make_recipe({**fields, "source": source_model.name}).spec() or _example_spec(source_model)
    config = DataFreeConfig(steps=steps, class_loss_weight=class_loss, seed=fields.get("seed", 0))
    return make_data_free_set(
        source_model, shape, fields.get("count", 32), out, config, spec, fields.get("input_name", name), source_model.name
    )


def _example_spec(source_model: SourceModel) -> Any:
    """The built-in example's preprocessing bounds its synthetic pixels like real digits."""
    from edgecompress.core.config import EXAMPLE_NAME
    from edgecompress.source.data import DIGITS_SPEC

    return DIGITS_SPEC if source_model.name == EXAMPLE_NAME else None


def _calibration_model(model: str | Path | None, weights: str | Path | None, input_shape: list[str]) -> SourceModel:
    from edgecompress.presets.example import load_model_or_example

    return load_model_or_example(None if model is None else str(model), _path_or_none(weights), input_shape)


def _single_input_name(source_model: SourceModel | None) -> str:
    """Key the set by the model's input name when it has exactly one (else the neutral `x`)."""
    shapes = getattr(source_model, "input_shapes", {}) or {}
    names = [name for name in shapes if name]
    if source_model is not None and source_model.onnx_path is not None:
        from edgecompress.export.graph import model_io, read_onnx

        names = [spec.name for spec in model_io(read_onnx(source_model.onnx_path))[0]]
    return names[0] if len(names) == 1 else "x"


def _preprocess_overrides(size: int | None, resize: int | Sequence[int] | None, crop: int | Sequence[int] | None,
                          color: str | None, mean: Sequence[float] | None, std: Sequence[float] | None,
                          layout: str | None) -> dict[str, Any]:
    values = {
        "resize": size if size is not None else _size_value(resize),
        "center_crop": size if size is not None else _size_value(crop),
        "color": color,
        "mean": None if mean is None else [float(value) for value in mean],
        "std": None if std is None else [float(value) for value in std],
        "layout": layout.upper() if layout else None,
    }
    return {key: value for key, value in values.items() if value is not None}


def _size_value(size: int | Sequence[int] | None) -> int | list[int] | None:
    """S, or [H, W] as the preprocessing spec holds it (a tuple from Python, a list from the CLI)."""
    return size if size is None or isinstance(size, int) else [int(value) for value in size]


def _default_preprocess(source: str | None) -> dict[str, Any]:
    from edgecompress.calib.sources import default_spec

    return default_spec(source or "").to_dict()


def bundle(build_dir: str | Path, *, target: str | None = None, out: str | Path | None = None,
           sign: str | Path | None = None, passphrase: str | None = None, include_reference: bool = False,
           samples: int = SELFTEST_SAMPLES) -> BundleArtifact:
    """Pack one built target into the reproducible, self-describing (optionally signed) archive `edgecompress ship`
    installs: what `edgecompress bundle` writes, by the same function.

    Args:
        build_dir: the build folder (`out` of `build`), or a built target folder itself (build/cpu) when `target` is
            unset, as `edgecompress bundle` takes.
        target: the target's name: its folder in `build_dir`.
        out: the archive to write (default: the target folder's bundle.tar.gz).
        sign: an ed25519 private key from `edgecompress keygen` to sign the manifest with.
        passphrase: the key's passphrase.
        include_reference: also carry the fp32 reference ONNX.
        samples: sample inputs (with this host's outputs for them) kept for the device self-test.

    Returns:
        The written archive (`path`) with its sha256, sizes, signer and manifest.
    """
    from edgecompress.ship.bundle import BundleOptions, build_bundle

    options = BundleOptions(include_reference=include_reference, sign_key=_path_or_none(sign), passphrase=passphrase,
                            samples=samples)
    target_dir = Path(build_dir) if target is None else Path(build_dir) / target
    return build_bundle(target_dir, _path_or_none(out), options)


def release(build_dir: str | Path, *, targets: str | Sequence[str] | None = None, out: str | Path, version: str,
            sign: str | Path, passphrase: str | None = None, samples: int = SELFTEST_SAMPLES) -> ReleaseArtifact:
    """Write a signed phone release (engines, manifest, golden I/O, index.json) for an app to verify, load and update:
    what `edgecompress release` writes, by the same function.

    Args:
        build_dir: the build folder, or one built phone target folder itself when `targets` is unset.
        targets: the phone targets' names (their folders in `build_dir`), released together.
        out: the release folder: OUT/index.json, OUT/VERSION/ and OUT/VERSION.zip.
        version: this release's version, MAJOR[.MINOR[.PATCH]]; an existing version is never rewritten.
        sign: the ed25519 private key (from `edgecompress keygen`) that signs the manifest.
        passphrase: the key's passphrase.
        samples: golden inputs, each with every engine's outputs, for the app's self-check.

    Returns:
        The written version folder, its zip and index.json, with the signer's key id and the manifest.
    """
    from edgecompress.ship.release import build_release

    names = [targets] if isinstance(targets, str) else targets
    target_dirs = [Path(build_dir)] if names is None else [Path(build_dir) / name for name in names]
    return build_release(target_dirs, Path(out), version, Path(sign), passphrase, samples)


def ship_bundle(archive: str | Path, to: str | Sequence[str], *, verify_key: str | Path | None = None,
                trust_on_first_use: bool = False, accept_new_signer: bool = False, allow_unsigned: bool = False,
                ssh_key: str | Path | None = None, ssh_passphrase: str | None = None, known_hosts: str | Path | None = None,
                accept_new_host_key: bool = False, timeout: float = SSH_TIMEOUT, remote_python: str = REMOTE_PYTHON,
                parallel: int = 1, progress: bool = True) -> list[HostResult]:
    """Install a bundle on devices over SSH, check it there and switch each one's `current` to it: what
    `edgecompress ship` does, by the same function.

    The bundle is verified here before any device is touched (a bad one raises BundleError or ShipError). Each device
    gets it over SFTP, runs its `run.py --verify --selftest` (`sha256sum -c` where it has no Python), and only then
    moves `current` to it. A device that fails keeps its release and says why in its result: one unreachable device
    does not hide what happened on the others, so check each result's `ok`.

    Args:
        archive: the bundle (.tar.gz) that `bundle` wrote.
        to: the devices as "[user@]host[:port]:/path", one string or several.
        verify_key: the signing public key (.pub from `edgecompress keygen`) a signed bundle must carry.
        trust_on_first_use: without `verify_key`: each device pins the signer of the first bundle it accepts.
        accept_new_signer: let devices accept and pin a signer other than the one they pinned (a new release key).
        allow_unsigned: ship a bundle without a signature.
        ssh_key: the SSH private key to log in with (default: ssh-agent and the ~/.ssh keys, as ssh's).
        ssh_passphrase: `ssh_key`'s passphrase.
        known_hosts: the known_hosts file the devices' host keys must be in (default ~/.ssh/known_hosts).
        accept_new_host_key: trust and record a host key not yet in known_hosts.
        timeout: seconds to wait for a device to answer before giving up on it.
        remote_python: the Python on the device that runs the bundle's checks (numpy and the engine's runtime).
        parallel: devices shipped to at the same time.
        progress: False silences the info line (warnings still show).

    Returns:
        One HostResult per device, in the order of `to`: `ok`, the `reason` of a failure, the `release` installed,
        the `previous` one and the check that passed on the device (`checked_by`).
    """
    from edgecompress.ship.transport import Destination, SshOptions, ship

    destinations = [Destination.parse(spec) for spec in ([to] if isinstance(to, str) else to)]
    ssh = SshOptions(key=_path_or_none(ssh_key), passphrase=ssh_passphrase, known_hosts=_path_or_none(known_hosts),
                     accept_new_host_key=accept_new_host_key, timeout=timeout, remote_python=remote_python)
    with _progress_shown(progress):
        return ship(Path(archive), destinations, ssh, _path_or_none(verify_key), allow_unsigned, parallel, None,
                    trust_on_first_use, accept_new_signer)


# --- the result -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_int8` wrote: the int8 QDQ ONNX file and the recipe (a build's report.json records the same)."""

    path: Path
    recipe: QuantRecipe
    target: str


@dataclass(frozen=True)
class Fidelity:
    """The shipped engine's fidelity in its task's metric, against the build's one budget."""

    metric: str
    value: float
    budget: str
    met: bool


@dataclass(frozen=True)
class EngineResult:
    """One target's engine as a user reads it first; every figure is its report.json's."""

    target: str
    kind: str
    path: Path | None  # None: a device kit, built on the device from its files
    precision: str  # int8 | mixed | fp16 | fp32
    fidelity: Fidelity | None
    speedup_vs_fp32: float | None
    latency_ms_p50: float | None  # None: not timed here (a device kit)
    latency_ms_p90: float | None
    latency_ms_p99: float | None
    size_bytes: int
    measured_on: str
    report_path: Path

    @classmethod
    def from_report(cls, report: dict[str, Any], out: Path) -> EngineResult:
        engine, latency, fidelity = report["engine"], report.get("latency_ms") or {}, report.get("fidelity")
        return cls(
            target=report["target"], kind=engine["kind"],
            path=Path(engine["path"]).resolve() if engine.get("path") else None,
            precision=engine["precision"],
            fidelity=Fidelity(fidelity["metric"], fidelity["value"], fidelity["budget"], fidelity["met"]) if fidelity else None,
            speedup_vs_fp32=report.get("speedup_vs_fp32"),
            latency_ms_p50=latency.get("p50"), latency_ms_p90=latency.get("p90"), latency_ms_p99=latency.get("p99"),
            size_bytes=engine["size_bytes"],
            measured_on=(report.get("measured_on") or {}).get("summary") or "not timed here (a device kit)",
            report_path=(out / report["target"] / "report.json").resolve(),
        )


@dataclass(frozen=True)
class BuildResult:
    """What `build` made: per target its engine's figures (`engines`), the report.json dicts (`reports`)."""

    engines: dict[str, EngineResult]
    reports: list[dict[str, Any]] = field(repr=False)  # whole report.json dicts: too long to print in a session

    @classmethod
    def from_reports(cls, reports: list[dict[str, Any]], out: Path) -> BuildResult:
        return cls({report["target"]: EngineResult.from_report(report, out) for report in reports}, reports)

    def summary(self) -> str:
        """The table `edgecompress build` prints, one line per target, as plain text."""
        import io

        from rich.console import Console

        from edgecompress.pipeline.report import SUMMARY_WIDTH, summary_table

        text = io.StringIO()
        Console(file=text, width=SUMMARY_WIDTH, color_system=None).print(summary_table(self.reports, SUMMARY_WIDTH))
        return "\n".join(line.rstrip() for line in text.getvalue().strip("\n").splitlines())

    def load(self, target: str = "cpu") -> EngineRunner:
        """The target's engine as a function (arrays, tensors or a dict in, numpy out), loaded by its engine builder."""
        from edgecompress.core.errors import DeviceOnlyEngineError, TargetError
        from edgecompress.core.targets import TargetProfile
        from edgecompress.engines import EngineArtifact, get_builder

        report = next((report for report in self.reports if report["target"] == target), None)
        if report is None:
            raise TargetError(f"this build has no target '{target}'", f"load one of: {', '.join(self.engines)}")
        engine = self.engines[target]
        if engine.path is None:
            raise DeviceOnlyEngineError(f"target '{target}' is a {engine.kind} device kit: it is built and runs on the device",
                                        "ship it with `edgecompress ship`, or load a target built here")
        facts = report["engine"]
        artifact = EngineArtifact(target, engine.kind, engine.precision, engine.path,
                                  [Path(name).resolve() for name in facts.get("files", [])], dict(facts.get("metadata") or {}))
        return EngineRunner(get_builder(engine.kind).load(artifact, TargetProfile.model_validate(report["profile"])))


@dataclass(frozen=True)
class EngineRunner:
    """A built engine as a function: numpy arrays, torch tensors, a tuple in input order or a dict by name in;
    numpy outputs out (one output: the array itself, else the list)."""

    runner: Runner

    def __call__(self, inputs: Any) -> Any:
        outputs = self.runner.run(self.feeds(inputs))
        return outputs[0] if len(outputs) == 1 else outputs

    def feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        """Inputs by the engine's input names, in its dtypes (float64 arrays become float32, as a model takes them)."""
        import numpy as np

        from edgecompress.calib.batches import model_inputs
        from edgecompress.core.errors import InputShapeError

        arrays, positional = model_inputs(inputs)
        names = [spec.name for spec in self.runner.inputs]
        if positional and len(arrays) == len(names):
            arrays = dict(zip(names, arrays.values()))
        missing = [name for name in names if name not in arrays]
        if missing:
            raise InputShapeError(f"the engine takes inputs {names}, got {list(arrays) if not positional else len(arrays)}",
                                  "pass one array per input in order, or a dict by input name")
        return {spec.name: np.ascontiguousarray(arrays[spec.name].astype(spec.dtype, copy=False)) for spec in self.runner.inputs}


__all__ = ["BuildResult", "EngineResult", "EngineRunner", "Fidelity", "QuantizeResult", "build", "bundle", "export_onnx",
           "make_calibration", "quantize_int8", "release", "ship_bundle"]
