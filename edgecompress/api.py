"""The public Python API: `edgecompress.build(model, calib=loader)` from the session that holds the model and data.

Users of NNCF write `nncf.quantize(model, nncf.Dataset(loader, transform_fn))`: the model and the data are already
in memory, and saving them to files for a command line is friction. `build` takes them as they are and runs the same
BUILD_STEPS and per-target build as `edgecompress build`, so the cache keys are the ones the CLI computes for the same
weights and arrays (an in-memory module is keyed by `module_hash`, arrays by `arrays_sha256`) and the reports are the
same report.json dicts. Every option is a BuildConfig field, validated there: the CLI's flags come from the same fields.

Nothing heavy is imported at module level (`import edgecompress` stays fast): torch, numpy and the pipeline load
on the first `build`.
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
    from edgecompress.engines.base import Runner
    from edgecompress.pipeline.pipeline import BuildContext
    from edgecompress.source.layout import BatchLayout
    from edgecompress.source.model import SourceModel

CALIB_COUNT = 512  # calibration samples kept from an in-memory source (the rest of a DataLoader is not read)
# keywords of `build` that are not BuildConfig fields: they say how to read in-memory data and modules
API_OPTIONS = ("calib_count", "example_input")
IN_MEMORY_MODEL = "in-memory torch.nn.Module"


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


def _options_section() -> str:
    """build()'s Options section, generated from the BuildConfig fields that `**options` takes, in the words of
    `edgecompress build --help` (`describe`): help(edgecompress.build) documents every option and cannot drift."""
    import inspect
    import textwrap

    from edgecompress.core.config import BuildConfig, describe

    parameters = inspect.signature(build).parameters
    lines = ["    Options:"]
    for name, config_field in BuildConfig.model_fields.items():
        if name not in parameters:  # model, calib, eval_data, out, input_shape: under Args, in their Python forms
            entry = f"{name} ({_type_name(config_field.annotation)}): {describe(name)}"
            lines += textwrap.wrap(entry, 120, initial_indent=" " * 8, subsequent_indent=" " * 12,
                                   break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


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


build.__doc__ = f"{(build.__doc__ or '').rstrip()}\n\n{_options_section()}\n"  # pydantic only: torch and numpy still load on first build


# --- options -> BuildConfig ------------------------------------------------------------------------------------------


def _config(model: Any, calib: Any, eval_data: Any, targets: Sequence[str], out: str | Path, input_shape: Any,
            options: dict[str, Any]) -> BuildConfig:
    """Keywords -> the one BuildConfig, validated by it: a wrong name or value fails before any work."""
    from edgecompress.core.config import make_config

    _check_option_names(options)
    values = {
        "model": _model_string(model, Path(out)),
        "target": [targets] if isinstance(targets, str) else list(targets),
        "out": Path(out),
        "input_shape": _shape_specs(input_shape),
        "calib": _path_or_none(calib),
        "eval_data": _path_or_none(eval_data),
    }
    return make_config({}, values | options, where="edgecompress.build()")


def _check_option_names(options: Mapping[str, Any]) -> None:
    """A misspelt keyword names the closest real ones instead of being ignored or failing deep in pydantic."""
    import difflib

    from edgecompress.core.config import BuildConfig
    from edgecompress.core.errors import ConfigError

    known = [*BuildConfig.model_fields, *API_OPTIONS]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise ConfigError(f"edgecompress.build() has no option '{name}'",
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
                              "pass input_shape=(1, 3, 224, 224), example_input=tensor, or in-memory calib data")
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
    from edgecompress.pipeline.pipeline import BuildContext, build, calibration_step, eval_step, load_step

    replaced: dict[Callable[[BuildContext], BuildContext], Callable[[BuildContext], BuildContext]] = {}
    if source is not None:
        replaced[load_step] = lambda context: context
    if calibration is not None:
        replaced[calibration_step] = lambda context: _with_calibration(context, calibration)
    if held_out is not None:
        replaced[eval_step] = lambda context: _with_eval_set(context, held_out)
    return build(config, BuildContext(config, source=source), replaced)


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


# --- the result -------------------------------------------------------------------------------------------------------


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


__all__ = ["BuildResult", "EngineResult", "EngineRunner", "Fidelity", "build"]
