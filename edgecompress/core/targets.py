"""Target profiles: one TOML file per device in `targets/`.

Adding a device is adding a file. A profile names the engine kind that builds for it
and everything that engine needs to know about the device (arch, precisions, threads,
batch range, engine options). Users may also pass a path to their own profile file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgecompress.core.errors import TargetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EngineKind = Literal["ort-cpu", "ort-arm", "tensorrt", "openvino", "executorch"]
Precision = Literal["fp32", "fp16", "int8"]


class BatchRange(BaseModel):
    """Batch sizes the engine must accept; `opt` is what benchmarks run at."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int = Field(1, ge=1)
    opt: int = Field(1, ge=1)
    max: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "BatchRange":
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch needs min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self


class TargetProfile(BaseModel):
    """A device: what engine to build for it and how it will be run there."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    engine: EngineKind
    arch: Literal["x86_64", "aarch64"]
    precisions: tuple[Precision, ...] = ("int8", "fp32")
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = all cores of the host")
    isa: tuple[str, ...] = Field(
        (), description="instruction-set features of the device (e.g. avx2, avx512_vnni, dotprod); "
        "empty = detect on the host (only meaningful when the host is the device)"
    )
    batch: BatchRange = BatchRange()
    options: dict[str, Any] = Field(default_factory=dict, description="engine-specific options")
    compare_engines: tuple[EngineKind, ...] = Field(
        (), description="other engine kinds built from the same model and timed side by side with `engine` on this "
        "host; the fastest within the budget ships (e.g. ort-cpu beside openvino)"
    )
    source: str = Field("", description="file the profile was read from (filled in by the loader)")
    alias_of: str = Field("", description="the profile this one renames (filled in by the loader)")

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def builtin_targets_dir() -> Path:
    """`targets/` beside the package (a checkout or editable install), else the installed copy."""
    repo_dir = Path(__file__).resolve().parents[2] / "targets"
    if repo_dir.is_dir():
        return repo_dir
    return Path(sys.prefix) / "share" / "edgecompress" / "targets"


def _search_dirs() -> list[Path]:
    extra = os.environ.get("EDGECOMPRESS_TARGETS")
    dirs = [Path(p) for p in extra.split(os.pathsep) if p] if extra else []
    return dirs + [builtin_targets_dir()]


def known_target_names() -> list[str]:
    names: set[str] = set()
    for directory in _search_dirs():
        names.update(p.stem for p in directory.glob("*.toml"))
    return sorted(names)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target profile {path} is not valid TOML: {exc}", "fix the file's syntax") from exc


def _find_profile_file(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        if not candidate.is_file():
            raise TargetError(f"target profile file {candidate} does not exist", "check the path")
        return candidate
    for directory in _search_dirs():
        path = directory / f"{name_or_path}.toml"
        if path.is_file():
            return path
    raise TargetError(
        f"unknown target '{name_or_path}'",
        f"use one of: {', '.join(known_target_names())}, or pass a profile file path (see `edgecompress targets`)",
    )


def load_profile(name_or_path: str, _seen: tuple[str, ...] = ()) -> TargetProfile:
    """Load a profile by name (from `targets/`) or by file path; follows `alias_of`."""
    path = _find_profile_file(name_or_path)
    data = _read_toml(path)
    alias = data.pop("alias_of", None)
    if alias is not None:
        if alias in _seen:
            raise TargetError(f"target alias loop: {' -> '.join(_seen + (alias,))}", "fix alias_of")
        base = load_profile(str(alias), _seen + (name_or_path,))
        # the alias keeps its own name (build folders and reports say what the user asked for)
        data = base.model_dump() | {"name": path.stem, "alias_of": base.name} | data
    data.setdefault("name", path.stem)
    data["source"] = str(path)
    try:
        return TargetProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(profile)'}: {err['msg']}" for err in exc.errors()
        )
        raise TargetError(
            f"target profile {path} is invalid: {problems}",
            "see targets/README.md for the keys a profile takes",
        ) from exc


def load_profiles(names: list[str]) -> list[TargetProfile]:
    """Load every requested profile up front, so a typo fails before any work is done."""
    return [load_profile(name) for name in names]


def all_profiles() -> list[TargetProfile]:
    return [load_profile(name) for name in known_target_names()]
