"""`edgecompress calib --text`: lines of text → the token arrays (and manifest) a BERT-family ONNX export calibrates on.

The tokenizer is a real WordPiece tokenizer made offline from a 50-word vocabulary, saved the way Hugging Face
saves one (`save_pretrained`), and loaded back the way the command loads any: `AutoTokenizer`, local files only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.calib.text import text_calibration_set
from edgecompress.calib.tokenizer import tokenizer_sha256
from edgecompress.core.errors import CalibrationError
from tests.cli_support import run_cli

pytest.importorskip("transformers")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 1, 2, 3
WORDS = (
    "the a an cat dog bird sat on mat ran to park in morning and is was it day sun bright sky blue quick brown fox "
    "jumps over lazy she he reads book every night we walk by river after rain children play outside school old "
    "tree stands near house . ,"
).split()
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "",
    "She reads a book every night.",
    "   ",
    "We walk by the river after the rain.",
    "Children play outside the school in the morning, and the sun is bright.",
    "The old tree stands near the house.",
    "It was a blue sky day.",
    "The bird ran to the park.",
]
LINES = [line.strip() for line in SENTENCES if line.strip()]


def save_wordpiece_tokenizer(folder: Path, words: list[str]) -> Path:
    """A BERT tokenizer over `words`, saved by `save_pretrained` as a model repository would ship it.

    `from_pretrained` on a folder holding vocab.txt works on transformers 4 and 5 alike; the brief's
    `BertTokenizerFast(vocab_file=...)` is silently ignored by transformers 5 (its argument is `vocab`),
    which would give a tokenizer that maps every word to [UNK].
    """
    from transformers import BertTokenizerFast

    vocabulary = folder.parent / f"{folder.name}-vocab"
    vocabulary.mkdir(parents=True)
    (vocabulary / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + words) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(vocabulary)).save_pretrained(str(folder))
    return folder


def token_id(word: str) -> int:
    return len(SPECIAL_TOKENS) + WORDS.index(word)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_wordpiece_tokenizer(tmp_path_factory.mktemp("tokenizer") / "bert-tiny", WORDS)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def full_lengths(tokenizer_dir: Path, lines: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return np.array([len(ids) for ids in tokenizer(lines)["input_ids"]])


# -- the arrays ---------------------------------------------------------------------------
def test_arrays_are_int64_rows_of_max_length_keyed_as_the_tokenizer_names_them(text_file, tokenizer_dir):
    made = text_calibration_set(text_file, tokenizer_dir, max_length=24)
    assert set(made.arrays) == {"input_ids", "attention_mask", "token_type_ids"}
    for array in made.arrays.values():
        assert array.dtype == np.int64 and array.shape == (len(LINES), 24)
    assert not made.arrays["token_type_ids"].any()  # one segment per line


def test_each_row_is_cls_then_the_words_then_sep_then_padding(text_file, tokenizer_dir):
    made = text_calibration_set(text_file, tokenizer_dir, max_length=24)
    ids, mask = made.arrays["input_ids"], made.arrays["attention_mask"]
    expected_first = [CLS_ID, *(token_id(w) for w in ("the", "cat", "sat", "on", "the", "mat", ".")), SEP_ID]
    assert ids[0, :9].tolist() == expected_first and not ids[0, 9:].any()
    for row, length in zip(range(len(LINES)), full_lengths(tokenizer_dir, LINES)):
        assert ids[row, 0] == CLS_ID and ids[row, length - 1] == SEP_ID
        assert (ids[row, length:] == PAD_ID).all()
        assert mask[row].tolist() == [1] * length + [0] * (24 - length)


def test_long_lines_are_truncated_to_max_length_ending_in_sep_and_counted(text_file, tokenizer_dir):
    lengths = full_lengths(tokenizer_dir, LINES)
    made = text_calibration_set(text_file, tokenizer_dir, max_length=10)
    assert made.arrays["input_ids"].shape == (len(LINES), 10)
    longer = lengths > 10
    assert made.manifest["text"]["truncated"] == int(longer.sum()) > 0
    assert (made.arrays["input_ids"][longer, -1] == SEP_ID).all() and made.arrays["attention_mask"][longer].all()


def test_count_takes_the_first_non_blank_lines(text_file, tokenizer_dir):
    made = text_calibration_set(text_file, tokenizer_dir, max_length=24, count=3)
    assert len(made) == 3
    assert made.arrays["input_ids"].tolist() == text_calibration_set(text_file, tokenizer_dir, 24).arrays["input_ids"][:3].tolist()
    assert made.manifest["seed"] is None and made.manifest["source"]["selection"] == "first lines"


def test_a_seed_draws_the_same_lines_every_time(text_file, tokenizer_dir):
    first = text_calibration_set(text_file, tokenizer_dir, max_length=24, count=4, seed=7)
    again = text_calibration_set(text_file, tokenizer_dir, max_length=24, count=4, seed=7)
    assert first.sha256 == again.sha256 and first.manifest["seed"] == 7


def test_a_classic_vocab_txt_and_tokenizer_config_folder_loads_too(tmp_path, text_file, tokenizer_dir):
    classic = tmp_path / "classic"
    classic.mkdir()
    (classic / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n", encoding="utf-8")
    (classic / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    made = text_calibration_set(text_file, classic, max_length=24)
    assert made.arrays["input_ids"].tolist() == text_calibration_set(text_file, tokenizer_dir, 24).arrays["input_ids"].tolist()


# -- warnings -----------------------------------------------------------------------------
def test_padding_warning_names_the_p90_length_when_max_length_is_far_too_long(text_file, tokenizer_dir, capsys):
    made = text_calibration_set(text_file, tokenizer_dir, max_length=128)
    p90 = made.manifest["text"]["length_distribution"]["p90"]
    printed = " ".join(capsys.readouterr().err.split())
    assert "warning:" in printed and "most of each row is padding" in printed
    assert f"lower --max-length to about the p90 length, {p90}" in printed
    assert any("most of each row is padding" in finding for finding in made.manifest["diagnostics"])


def test_truncation_warning_when_more_than_a_tenth_of_lines_are_cut(text_file, tokenizer_dir, capsys):
    text_calibration_set(text_file, tokenizer_dir, max_length=8)
    printed = " ".join(capsys.readouterr().err.split())
    assert "were truncated: raise --max-length to about the p90 length" in printed
    assert "most of each row is padding" not in printed


def test_a_max_length_that_fits_the_text_warns_only_about_the_small_count(text_file, tokenizer_dir, capsys):
    p90 = int(np.percentile(full_lengths(tokenizer_dir, LINES), 90, method="higher"))
    made = text_calibration_set(text_file, tokenizer_dir, max_length=p90)
    assert [finding for finding in made.manifest["diagnostics"] if not finding.startswith("only ")] == []


# -- the manifest and the tokenizer hash --------------------------------------------------
def test_cli_writes_the_set_and_a_manifest_with_the_text_section(monkeypatch, tmp_path, text_file, tokenizer_dir):
    out = tmp_path / "calib.npz"
    assert run_cli(monkeypatch, "calib", "--text", text_file, "--tokenizer", tokenizer_dir, "--max-length", 16,
                   "--count", 6, "--out", out) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    lengths = full_lengths(tokenizer_dir, LINES[:6])
    assert manifest["source"]["kind"] == "text"
    assert manifest["source"]["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert manifest["count"] == 6 and manifest["inputs"]["input_ids"]["shape"] == [6, 16]
    text = manifest["text"]
    assert text["tokenizer"]["sha256"] == tokenizer_sha256(tokenizer_dir)
    assert text["tokenizer"]["files"] == sorted(p.name for p in tokenizer_dir.iterdir())
    assert text["max_length"] == 16 and text["truncated"] == int((lengths > 16).sum())
    assert text["length_distribution"] == {"min": int(lengths.min()), "p50": int(np.percentile(lengths, 50, method="higher")),
                                           "p90": int(np.percentile(lengths, 90, method="higher")),
                                           "max": int(lengths.max()), "mean": round(float(lengths.mean()), 2)}
    with np.load(out) as archive:
        assert sorted(archive.files) == ["attention_mask", "input_ids", "token_type_ids"]
        assert text["padding_fraction"] == round(float((archive["attention_mask"] == 0).mean()), 4)


def test_the_written_set_loads_for_a_model_with_the_tokenizers_input_names(monkeypatch, tmp_path, text_file, tokenizer_dir):
    from edgecompress.calib.load import load_calibration_set
    from edgecompress.source.specs import TensorSpec

    out = tmp_path / "calib.npz"
    assert run_cli(monkeypatch, "calib", "--text", text_file, "--tokenizer", tokenizer_dir, "--max-length", 16, "--out", out) == 0
    inputs = [TensorSpec(name, (None, 16), "int64") for name in ("input_ids", "attention_mask", "token_type_ids")]
    loaded = load_calibration_set(out, inputs)  # verifies the manifest's checksum
    assert len(loaded) == len(LINES) and loaded.manifest["text"]["max_length"] == 16


def test_changing_the_vocabulary_changes_the_tokenizer_hash(tmp_path, tokenizer_dir):
    same = save_wordpiece_tokenizer(tmp_path / "same", WORDS)
    changed = save_wordpiece_tokenizer(tmp_path / "changed", [*WORDS, "river-boat"])
    assert tokenizer_sha256(same) == tokenizer_sha256(tokenizer_dir)
    assert tokenizer_sha256(changed) != tokenizer_sha256(tokenizer_dir)


def test_files_beside_the_tokenizer_do_not_change_its_hash(tmp_path):
    folder = save_wordpiece_tokenizer(tmp_path / "model", WORDS)
    before = tokenizer_sha256(folder)
    (folder / "model.safetensors").write_bytes(b"weights are not the tokenizer")
    assert tokenizer_sha256(folder) == before


# -- checked against an ONNX export -------------------------------------------------------
def encoder_shaped_onnx(path: Path, sequence_length: int) -> Path:
    """input_ids, attention_mask (int64 [batch, L]) → embeddings masked by attention: the inputs of an export
    without token_type_ids (DistilBERT-style)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(len(SPECIAL_TOKENS) + len(WORDS), 4)).astype(np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
         helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["mask_float", "last"], ["mask_column"]),
         helper.make_node("Mul", ["embedded", "mask_column"], ["hidden"])],
        "encoder",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", sequence_length]) for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", sequence_length, 4])],
        [table, numpy_helper.from_array(np.array([-1], np.int64), "last")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_with_model_the_set_keeps_only_the_inputs_the_export_takes(monkeypatch, tmp_path, text_file, tokenizer_dir):
    model = encoder_shaped_onnx(tmp_path / "encoder.onnx", 16)
    out = tmp_path / "calib.npz"
    assert run_cli(monkeypatch, "calib", "--text", text_file, "--tokenizer", tokenizer_dir, "--max-length", 16,
                   "--model", model, "--out", out) == 0
    with np.load(out) as archive:
        assert sorted(archive.files) == ["attention_mask", "input_ids"]


def test_with_model_a_max_length_the_export_cannot_take_is_refused(monkeypatch, tmp_path, text_file, tokenizer_dir, capsys):
    model = encoder_shaped_onnx(tmp_path / "encoder.onnx", 16)
    out = tmp_path / "calib.npz"
    assert run_cli(monkeypatch, "calib", "--text", text_file, "--tokenizer", tokenizer_dir, "--max-length", 8,
                   "--model", model, "--out", out) != 0
    assert "size 8 on axis 1, the model needs 16" in " ".join(capsys.readouterr().err.split())
    assert not list(tmp_path.glob("calib*"))


# -- mistakes -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, phrases", [
    (["--tokenizer", "MISSING"], ["tokenizer folder", "does not exist", "save_pretrained"]),
    (["--tokenizer", "NO_TOKENIZER"], ["holds no tokenizer", "vocab.txt"]),
    (["--tokenizer", "VOCAB_ONLY"], ["nothing that says which tokenizer reads it", "tokenizer_config.json"]),
    (["--text", "EMPTY_TEXT"], ["holds no text", "one sentence or passage per line"]),
    (["--text", "MISSING"], ["text file", "does not exist"]),
    (["--max-length", "1"], ["--max-length 1 leaves no room", "--max-length 2 or more"]),
    (["--count", "50"], ["has only 8 non-blank lines", "--count 8"]),
    (["--from", "digits"], ["--from do not apply"]),
])
def test_bad_input_is_one_clear_error_and_no_file(monkeypatch, tmp_path, text_file, tokenizer_dir, capsys, args, phrases):
    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_text("{}")
    (tmp_path / "vocab-only").mkdir()
    (tmp_path / "vocab-only" / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + WORDS), encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n  \n\n", encoding="utf-8")
    given = {"--text": text_file, "--tokenizer": tokenizer_dir, "--max-length": "16"}
    substitutes = {"MISSING": tmp_path / "missing", "NO_TOKENIZER": tmp_path / "no-tokenizer",
                   "VOCAB_ONLY": tmp_path / "vocab-only", "EMPTY_TEXT": tmp_path / "empty.txt"}
    extra = dict(zip(args[::2], [substitutes.get(value, value) for value in args[1::2]]))
    options = [str(part) for option, value in {**given, **extra}.items() for part in (option, value)]
    out = tmp_path / "calib.npz"
    assert run_cli(monkeypatch, "calib", *options, "--out", out) != 0
    stderr = capsys.readouterr().err
    printed = " ".join(stderr.split())
    assert "error:" in printed and "fix:" in printed and "Traceback" not in stderr, stderr
    for phrase in phrases:
        assert phrase in printed, stderr
    assert not list(tmp_path.glob("calib*")) and not list(tmp_path.glob(".calib*"))


def test_text_without_tokenizer_or_max_length_names_what_is_missing(monkeypatch, tmp_path, text_file, capsys):
    assert run_cli(monkeypatch, "calib", "--text", text_file, "--out", tmp_path / "calib.npz") != 0
    assert "needs --tokenizer, --max-length too" in " ".join(capsys.readouterr().err.split())


def test_without_transformers_the_error_says_which_extra_to_install(monkeypatch, text_file, tokenizer_dir):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(CalibrationError) as raised:
        text_calibration_set(text_file, tokenizer_dir, max_length=16)
    assert raised.value.fix == 'pip install "edgecompress[transformers]"'
