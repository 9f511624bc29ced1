"""One definition of the build's options: each BuildConfig field is one `edgecompress build` flag with the field's
description and default as its help, and one keyword of `edgecompress.build`, documented by help() in the same words.

What is on one side only is listed here with its reason, so a new option on one side alone fails a test."""

from __future__ import annotations

import inspect
import pydoc
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

import edgecompress
from edgecompress import api
from edgecompress.cli import app
from edgecompress.core.config import BuildConfig, describe, load_config
from edgecompress.core.errors import ConfigError

# fields without a flag of their own (set by `--config FILE` or Python only), with the reason: none today
CONFIG_FILE_ONLY: dict[str, str] = {}
# flags of `edgecompress build` that are not build options: they read a file of options or act after the build
CLI_ONLY = {
    "config": "the TOML file of BuildConfig fields itself",
    "bundle": "packs the built targets for `edgecompress ship` after the build (edgecompress.ship, not the build)",
    "sign": "signs those bundles",
    "passphrase": "the --sign key's passphrase",
}
# keywords of edgecompress.build() that are not BuildConfig fields: how to read in-memory data and modules
API_ONLY = {"transform_fn", "progress", *api.API_OPTIONS}
# BuildConfig fields that build() takes as named parameters, in Python forms (a module, arrays, a tuple) or renamed
API_PARAMETERS = {"model": "model", "calib": "calib", "eval_data": "eval_data", "out": "out", "input_shape": "input_shape",
                  "target": "targets"}


def build_command() -> Any:
    """`edgecompress build` as typer makes it (a click command of typer's own click: its parameters, help, defaults)."""
    return get_command(app).commands["build"]  # type: ignore[attr-defined]  # the app's group


def cli_options() -> dict[str, Any]:
    return {param.name: param for param in build_command().params if param.param_type_name == "option"}


def shown_default(name: str) -> str:
    """The default as the help shows it: unset, a list joined by commas (none when empty), else str()."""
    default = BuildConfig.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, list):
        return ", ".join(map(str, default)) or "none"
    return "unset" if default is None else str(default)


def config_from_keyword(name: str, value: Any, out: Path) -> BuildConfig:
    """The BuildConfig that edgecompress.build(..., name=value) validates before any work (api._config)."""
    arguments: dict[str, Any] = {"model": "model.onnx", "calib": None, "eval_data": None, "targets": ("cpu",), "out": out,
                                 "input_shape": None}
    options = {}
    if API_PARAMETERS.get(name) in arguments:
        arguments[API_PARAMETERS[name]] = value
    else:
        options[name] = value
    return api._config(**arguments, options=options)


def documented_entries(text: str) -> set[str]:
    """Names documented as `name: ...` (Args) or `name (type): ...` (Options) in a help() text."""
    return set(re.findall(r"^\s+\*{0,2}(\w+)(?: \([^)]*\))?:", text, flags=re.MULTILINE))


# --- the CLI -----------------------------------------------------------------------------------------------------------


def test_every_config_field_is_one_cli_option_or_a_listed_config_file_only_field():
    names = [param.name for param in build_command().params]
    for name in BuildConfig.model_fields:
        assert names.count(name) == (0 if name in CONFIG_FILE_ONLY else 1), name
    assert set(CONFIG_FILE_ONLY) <= set(BuildConfig.model_fields)


def test_every_cli_option_is_a_config_field_or_a_listed_cli_only_option():
    unknown = set(cli_options()) - set(BuildConfig.model_fields) - set(CLI_ONLY)
    assert not unknown
    assert set(CLI_ONLY) <= set(cli_options())


def test_each_options_help_is_its_fields_description_and_default():
    for name, option in cli_options().items():
        if name in CLI_ONLY:
            continue
        description = BuildConfig.model_fields[name].description
        assert option.help == describe(name), name
        assert description and option.help.startswith(description), name
        assert option.help.endswith(f"(default: {shown_default(name)})"), name


def test_cli_options_have_no_default_of_their_own_so_the_fields_default_applies():
    for name, option in cli_options().items():
        if name not in CLI_ONLY:
            assert option.default is None and not option.show_default, name


def test_a_build_with_no_options_has_the_same_config_from_the_cli_and_from_python():
    parsed = build_command().make_context("build", []).params
    from_cli = load_config(None, {name: value for name, value in parsed.items() if name not in CLI_ONLY})
    defaults = {name: p.default for name, p in inspect.signature(edgecompress.build).parameters.items()}
    from_python = api._config(None, None, defaults["eval_data"], defaults["targets"], defaults["out"], defaults["input_shape"], {})
    assert from_cli == from_python == BuildConfig()


# --- the Python API ---------------------------------------------------------------------------------------------------


def test_build_takes_every_config_field_as_a_keyword_with_its_default_value(tmp_path):
    parameters = inspect.signature(edgecompress.build).parameters
    for name, field in BuildConfig.model_fields.items():
        if name in API_PARAMETERS:
            assert parameters[API_PARAMETERS[name]].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                             inspect.Parameter.POSITIONAL_OR_KEYWORD), name
        default = field.get_default(call_default_factory=True)
        assert getattr(config_from_keyword(name, default, tmp_path), name) == default, name


def test_builds_named_parameters_are_config_fields_or_listed_api_only_ones():
    named = set(inspect.signature(edgecompress.build).parameters) - {"options"}
    assert named - set(API_PARAMETERS.values()) == API_ONLY - set(api.API_OPTIONS)


def test_a_misspelt_keyword_is_a_config_error_naming_it_and_the_closest_option(tmp_path):
    with pytest.raises(ConfigError) as error:
        edgecompress.build("model.onnx", calib=None, out=tmp_path, bench_run=10)  # fails before any work
    assert "'bench_run'" in error.value.problem and error.value.fix.startswith("did you mean 'bench_runs'")


def test_an_unknown_keyword_is_a_config_error_listing_every_option(tmp_path):
    with pytest.raises(ConfigError) as error:
        edgecompress.build("model.onnx", calib=None, out=tmp_path, colour="red")
    assert "'colour'" in error.value.problem and error.value.fix.startswith("valid options: ")
    assert set(error.value.fix.removeprefix("valid options: ").split(", ")) == set(BuildConfig.model_fields) | set(api.API_OPTIONS)


# --- help(edgecompress.build) -----------------------------------------------------------------------------------------


def test_help_documents_every_argument_and_every_config_field():
    text = pydoc.plain(pydoc.render_doc(edgecompress.build))  # what help(edgecompress.build) prints
    documented = documented_entries(text)
    assert set(BuildConfig.model_fields) - set(API_PARAMETERS) <= documented
    assert set(inspect.signature(edgecompress.build).parameters) <= documented
    assert all(f"`{name}`" in text for name in api.API_OPTIONS)  # read from **options: described there


def test_help_gives_each_option_its_type_and_the_cli_help_text():
    text = " ".join((edgecompress.build.__doc__ or "").split())
    for name, field in BuildConfig.model_fields.items():
        if name not in inspect.signature(edgecompress.build).parameters:
            assert " ".join(f"{name} ({api._type_name(field.annotation)}): {describe(name)}".split()) in text, name
    assert "bench_runs (int): " in text and "max_accuracy_drop (float | None): " in text and "precision (str): " in text


def test_importing_the_api_and_its_help_loads_neither_torch_nor_numpy():
    code = "import sys, edgecompress; edgecompress.build.__doc__; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
