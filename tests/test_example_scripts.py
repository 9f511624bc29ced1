"""The copyable scripts in examples/ run as a user runs them (a fresh process, their own working folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_calib_text import LINES, WORDS, save_wordpiece_tokenizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
    done = subprocess.run([sys.executable, str(EXAMPLES / "sentence_encoder.py"), str(folder), "calib.txt", "held-out.txt",
                           "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "neighbours" in done.stdout and "embedding starts" in done.stdout
    assert (tmp_path / "build" / "sentence-encoder" / "cpu" / "report.json").is_file()
