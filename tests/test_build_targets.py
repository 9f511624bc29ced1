"""`edgecompress build` end to end for a Jetson (on-device kit) and a Raspberry Pi 5 (.ort)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from edgecompress.core.config import BuildConfig
from edgecompress.quantize.isa import host_arch
from edgecompress.source.data import digits_splits
from edgecompress.pipeline.pipeline import build
from tests._int8_models import qdq_models  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def reports(qdq_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    splits = digits_splits()
    np.savez(root / "calib.npz", input=splits.val.x[:64])
    np.savez(root / "eval.npz", input=splits.test.x[:64], y=splits.test.y[:64])
    config = BuildConfig(model=str(qdq_models["fp32"]), target=["jetson", "raspberry-pi-5"], calib=root / "calib.npz",
                         eval_data=root / "eval.npz", out=root / "out", bench_runs=10, bench_warmup=1)
    return config.out, {report["target"]: report for report in build(config)}


def test_jetson_build_writes_the_kit_and_says_to_build_on_the_device(reports):
    out, by_target = reports
    report = json.loads((out / "jetson" / "report.json").read_text())
    assert report["engine"]["path"] is None and report["engine"]["metadata"]["built_on_device"]
    assert (out / "jetson" / "device-build-kit" / "build_engine.sh").is_file()
    assert not list(out.rglob("engine.plan"))
    assert "must be built on the device" in (out / "jetson" / "report.md").read_text()
    assert "trtexec --onnx=model.int8.onnx" in report["engine"]["note"]
    assert report["quantization"]["recipe"]["quantize_bias"] is False  # TensorRT takes float biases


def test_jetson_report_still_shows_what_int8_did_to_the_model(reports):
    _, by_target = reports
    check = by_target["jetson"]["int8_model_check"]
    assert check["agreement"]["samples"] == 64 and check["agreement"]["top1"] > 0.5
    assert "simulated int8" in check["how"]


def test_device_kit_is_judged_by_the_budget_on_the_host_simulation_and_says_so(reports):
    _, by_target = reports
    fidelity = by_target["jetson"]["fidelity"]
    assert fidelity["metric"] == "top-1 accuracy drop" and fidelity["budget"].endswith("(default for classify)")
    assert "simulation" in fidelity["validated_on"] and fidelity["met"] is True
    assert any(line.startswith("Fidelity (classify)") and "simulation" in line for line in by_target["jetson"]["verdict"])


def test_raspberry_pi_5_build_runs_the_ort_engine_here(reports):
    out, by_target = reports
    report = by_target["raspberry-pi-5"]
    assert report["engine"]["path"].endswith("engine.ort") and (out / "raspberry-pi-5" / "required_operators.config").is_file()
    assert report["agreement"]["samples"] == 64 and report["latency_ms"]["p50"] > 0
    assert report["engine"]["metadata"]["device_providers"][0] == "XNNPACKExecutionProvider"
    assert "## Engine" in (out / "raspberry-pi-5" / "report.md").read_text()


@pytest.mark.parametrize(
    "unavailable, needs_device_arch, profile_arch, host, here",
    [
        (None, True, "x86_64", "x86_64", True),  # TensorRT + GPU on the device's own architecture: a plan here
        (None, True, "aarch64", "x86_64", False),  # --target jetson on an x86 host that has TensorRT: a kit
        ("TensorRT is not installed", True, "x86_64", "x86_64", False),  # no runtime here: a kit
        (None, False, "aarch64", "x86_64", True),  # an ORT-format engine converts anywhere
    ],
)
def test_where_an_engine_is_built_is_decided_from_the_profile_and_the_host(unavailable, needs_device_arch, profile_arch, host, here):
    from edgecompress.engines.base import decide_build_place

    place = decide_build_place(unavailable, needs_device_arch, profile_arch, host)
    assert place.here is here
    assert (place.reason == "") is here
    if unavailable:
        assert place.reason == unavailable
    elif not here:
        assert "aarch64" in place.reason and "x86_64" in place.reason


def test_every_builder_states_where_it_builds_for_each_profile():
    from edgecompress.core.targets import all_profiles
    from edgecompress.engines import build_place, get_builder

    from edgecompress.quantize.isa import host_arch

    for profile in all_profiles():
        builder = get_builder(profile.engine)
        place = build_place(builder, profile)
        if profile.engine in ("ort-cpu", "ort-arm"):
            assert place.here  # ONNX Runtime engines are built (and converted) on any host
        elif profile.engine == "openvino":
            assert place.here is (builder.available() is None)  # an x86 CPU engine, wherever openvino is installed
        elif profile.engine == "executorch":
            # a phone's .pte is portable: built (and run through XNNPACK for its figures) wherever executorch is installed
            assert place.here is (builder.available() is None)
        elif profile.arch != host_arch():
            assert not place.here and host_arch() in place.reason  # a Jetson's plan is never built on x86
        else:
            assert place.here is (builder.available() is None)


def test_figures_of_a_raspberry_pi_build_say_they_were_measured_on_this_host(reports, tmp_path):
    import platform

    from edgecompress.ship.bundle import build_bundle

    out, by_target = reports
    report = by_target["raspberry-pi-5"]
    where = report["measured_on"]
    assert where["arch"] == platform.machine() and where["cpu"] and where["cores"] and where["device"] == "CPU"
    assert where["target_arch"] == "aarch64" and not where["target_arch_matches"]
    assert where["session"]["allow_spinning"] is False and where["session"]["intra_op_threads"] >= 1
    assert "not the aarch64 raspberry-pi-5" in report["latency_ms"]["measured_on"]
    assert report["reference"]["latency_ms"]["measured_on"] == report["latency_ms"]["measured_on"]
    speed = next(line for line in report["verdict"] if "than fp32" in line)
    assert f"on this host ({platform.machine()}, not measured on the aarch64 raspberry-pi-5)" in speed
    assert "Figures measured on this host" in (out / "raspberry-pi-5" / "report.md").read_text()
    figures = build_bundle(out / "raspberry-pi-5", tmp_path / "pi.tar.gz").manifest["figures"]
    assert figures["measured_on"] == where and "speedup_vs_fp32" in figures


def test_summary_table_says_a_raspberry_pi_was_timed_on_this_host(reports):
    from rich.console import Console

    from edgecompress.pipeline.report import summary_table

    _, by_target = reports
    console = Console(record=True, width=100)
    console.print(summary_table([by_target["raspberry-pi-5"]]))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("raspberry-pi-5 "))
    assert "measured on" in text and f"host {host_arch()}" in row


def _over_budget_mixed_kit(report: dict) -> dict:
    """A wide row a build writes: the longest profile name, an int8+fp16 kit, a long metric, over its budget."""
    variant = copy.deepcopy(report)
    variant["target"] = "jetson-orin-nano"
    variant["engine"] |= {"precision": "mixed", "precision_layers": {"int8": 120, "fp16": 17}}
    variant["fidelity"] |= {"metric": "character error rate", "value": 0.1534, "limit": 0.02, "higher_is_better": False,
                            "met": False}
    return variant


@pytest.mark.parametrize("width", [80, 100])
def test_summary_has_one_line_per_target_and_fits_the_terminal(reports, width):
    from rich.console import Console

    from edgecompress.pipeline.report import summary_table

    _, by_target = reports
    rows = [by_target["jetson"], by_target["raspberry-pi-5"], _over_budget_mixed_kit(by_target["jetson"])]
    console = Console(record=True, width=width)
    console.print(summary_table(rows, width))
    lines = [line.rstrip() for line in console.export_text().splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= width
    title, _, header, *data_rows, caption = lines  # headers are bottom-aligned: 'p50 ms' and 'vs fp32' take two lines
    assert "summary" in title and header.startswith("target") and header.endswith("fp32  measured on") and "report.md" in caption
    assert len(data_rows) == len(rows)  # no row wrapped onto a second line
    assert all(row.startswith(report["target"][:8]) for row, report in zip(data_rows, rows))
    assert all("host" in row for row in data_rows)  # where the figures come from is never cut away
    if width >= 100:  # what a person reads first is there in full at 100 columns
        jetson, pi, mixed = data_rows
        assert jetson.startswith("jetson ") and "tensorrt int8 kit" in jetson and "host sim" in jetson
        assert pi.startswith("raspberry-pi-5 ") and "ort-arm" in pi and f"host {host_arch()}" in pi
        assert mixed.startswith("jetson-orin-nano ") and "tensorrt int8+fp16 kit" in mixed
        assert "OVER CER 0.153 > 0.020" in mixed
