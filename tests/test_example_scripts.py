"""The copyable scripts in examples/ run as a user runs them (a fresh process, their own working folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ship_support import device  # noqa: F401 (fixture: a loopback sshd, skipped where sshd is not installed)
from tests.test_calib_text import LINES, WORDS, save_wordpiece_tokenizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python examples/SCRIPT ARGS...` in `cwd`; fails the test with the script's stderr unless it exits 0."""
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_the_sentence_encoder_example_builds_a_checkpoint_folder_from_text_files(tmp_path):
    """A tiny BERT sentence-transformers folder with its own WordPiece tokenizer, two text files: the example makes
    both token sets, builds for cpu, prints the summary and embeds a held-out sentence on the engine."""
    pytest.importorskip("transformers")
    from tests.test_transformer_int8 import _sentence_encoder_folder

    folder = save_wordpiece_tokenizer(_sentence_encoder_folder(tmp_path), WORDS)
    rng = np.random.default_rng(0)
    for name, count in (("calib.txt", 64), ("held-out.txt", 40)):
        lines = [" ".join(rng.choice(WORDS[:-2], size=rng.integers(4, 12))) + "." for _ in range(count)]
        (tmp_path / name).write_text("\n".join(LINES + lines) + "\n", encoding="utf-8")
    done = run_example("sentence_encoder.py", str(folder), "calib.txt", "held-out.txt", "cpu", cwd=tmp_path)
    assert "neighbours" in done.stdout and "embedding starts" in done.stdout
    assert (tmp_path / "build" / "sentence-encoder" / "cpu" / "report.json").is_file()


@pytest.mark.slow  # a real YOLOv8s at 640×640: calibration, evaluation and timing on this machine's cores
def test_the_onnx_detector_example_builds_the_corpus_yolo_from_a_photo_folder_judged_by_detection_f1(tmp_path):
    """The model corpus's YOLOv8s and a folder of 8 PNG photos with people in them: the example makes the
    calibration set from the folder, builds for cpu and prints the F1 of the int8 engine's boxes against fp32's."""
    from PIL import Image

    from tests.corpus_inputs import letterboxed_photos
    from tests.model_corpus import YOLO_DETECTOR, CorpusModelMissing

    try:
        detector = YOLO_DETECTOR.locate()
    except CorpusModelMissing as missing:
        pytest.skip(str(missing))
    (tmp_path / "photos").mkdir()
    for index, image in enumerate(letterboxed_photos(8, seed=1)):  # NCHW RGB in [0, 1]
        pixels = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "photos" / f"{index}.png")
    done = run_example("onnx_detector.py", "photos", str(detector), cwd=tmp_path)
    report = json.loads((tmp_path / "build" / "detector" / "cpu" / "report.json").read_text())
    assert report["quantization"]["calibration"]["samples"] == 8
    fidelity = report["fidelity"]
    assert fidelity["task"] == "detect" and fidelity["metric"] == "detection F1" and fidelity["met"]
    assert f"F1 {fidelity['value']:.3f}" in done.stdout  # the summary's fidelity column


def test_the_phone_release_example_writes_a_signed_release_that_the_app_loader_accepts(tmp_path):
    """The example builds for android-arm64, releases 2.0.0 signed with the key it makes, and loads it as an app does;
    here the release is loaded again, in this process, with the public key the example wrote."""
    from edgecompress.device.app_release import latest_version, load_release

    done = run_example("phone_release.py", "2.0.0", cwd=tmp_path)
    assert "golden check passed" in done.stdout and "class of the first test digit" in done.stdout
    report = json.loads((tmp_path / "build" / "phone" / "android-arm64" / "report.json").read_text())
    assert report["fidelity"]["task"] == "classify"
    loaded = load_release(tmp_path / "release" / "2.0.0", tmp_path / "release-key.pub", "android-arm64")
    assert loaded.engine["kind"] == "ort-arm" and loaded.engine["path"].endswith(".ort")
    assert latest_version(tmp_path / "release" / "index.json")["version"] == "2.0.0"


def test_the_ship_example_installs_a_signed_bundle_that_passes_its_checks_on_the_device(device, tmp_path):
    """The example ships to a loopback sshd, logging in as a user does: the key and known_hosts in ~/.ssh (HOME is a
    folder of the test's), no ssh-agent. The device's `current` is the bundle, and its self-test passes there again."""
    from edgecompress.core.artifacts import sha256_file

    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    shutil.copy(device.user_key, ssh / "id_ed25519")
    shutil.copy(device.known_hosts, ssh / "known_hosts")
    env = {name: value for name, value in os.environ.items() if name != "SSH_AUTH_SOCK"} | {"HOME": str(tmp_path / "home")}
    root = device.root / "example"
    done = run_example("ship_to_device.py", device.destination(root), "cpu", sys.executable, cwd=tmp_path, env=env)
    assert "checked by run.py --verify + --selftest" in done.stdout
    bundle = tmp_path / "build" / "iot" / "cpu" / "bundle.tar.gz"
    assert os.readlink(root / "current") == f"releases/{sha256_file(bundle)[:16]}"
    selftest = subprocess.run([sys.executable, "run.py", "--selftest"], cwd=root / "current", capture_output=True,
                              text=True, timeout=120)
    assert selftest.returncode == 0 and "self-test passed" in selftest.stdout
