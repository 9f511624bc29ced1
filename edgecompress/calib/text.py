"""Calibration sets for transformer encoders: lines of text → the token arrays a BERT-family ONNX export takes.

Every row is padded and truncated to one `max_length`, because int8 ranges are calibrated at the shape the
engine will run. That shape is easy to get wrong in both directions, and the quantizer cannot tell: rows that
are mostly padding calibrate the attention on [PAD] embeddings, and truncated rows never show the ranges of
the positions cut off. So the manifest records the un-truncated length distribution, the truncated lines and
the padding fraction, and a warning names the --max-length the text actually needs.

The arrays are keyed exactly as the tokenizer names them (`input_ids`, `attention_mask`, `token_type_ids`):
those are the input names of a Hugging Face ONNX export, so the set matches the model without a mapping.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgecompress.calib.diagnostics import too_small
from edgecompress.calib.generate import describe, fit_to_model
from edgecompress.calib.load import CalibrationSet
from edgecompress.calib.manifest import check_out_path, write_set
from edgecompress.calib.tokenizer import load_tokenizer, tokenizer_files, tokenizer_sha256
from edgecompress.core.artifacts import sha256_file
from edgecompress.core.errors import CalibrationError
from edgecompress.core.progress import warn

MIN_MAX_LENGTH = 2  # room for [CLS] and [SEP] (or <s> and </s>)
PADDING_LIMIT = 0.5  # above this share of attention_mask zeros, most of each row is padding
TRUNCATED_LIMIT = 0.1  # above this share of truncated lines, the set misses the ranges of the later positions
UNBOUNDED_MODEL_LENGTH = 1_000_000  # tokenizers that do not know their model's limit say ~1e30
TEXT_FIX = "pass a UTF-8 text file with one sentence or passage per line"


def text_calibration_set(
    text_path: Path, tokenizer_dir: Path, max_length: int, count: int | None = None, seed: int | None = None
) -> CalibrationSet:
    """Tokenize the first `count` non-blank lines (all by default; a seeded draw of them when `seed` is given).

    Nothing is written: `make_text_calibration_set` checks the set against a model and writes it, and a
    build can use this set in memory. The warnings about padding and truncation are printed here, where
    the set is made, and kept in the manifest's `diagnostics`.
    """
    check_max_length(max_length)
    text_path = Path(text_path).expanduser()
    lines = read_lines(text_path, count, seed)
    tokenizer = load_tokenizer(tokenizer_dir)
    arrays, full_lengths = tokenize(tokenizer, lines, max_length)
    text = describe_text(tokenizer, Path(tokenizer_dir).expanduser(), max_length, full_lengths, arrays["attention_mask"])
    findings = too_small(arrays) + text_findings(text, _model_length_limit(tokenizer))
    for finding in findings:
        warn(finding)
    source = {"kind": "text", "location": str(text_path), "sha256": sha256_file(text_path),
              "selection": "first lines" if seed is None else "seeded draw of lines"}
    # describe() types `seed` for sampled sets; a first-lines text set was drawn with none, and says so
    manifest = {**describe(arrays, source, 0, None), "seed": seed, "text": text, "diagnostics": findings}
    return CalibrationSet(arrays, manifest["sha256"], str(text_path), manifest=manifest)


def make_text_calibration_set(
    text_path: Path, tokenizer_dir: Path, max_length: int, out: Path, count: int | None = None,
    seed: int | None = None, model: Any = None,
) -> CalibrationSet:
    """`edgecompress calib --text …` as a function: tokenize, check against an ONNX `model` if given, write atomically.

    The model check keeps only the arrays the model takes (an export without `token_type_ids` gets none)
    and refuses a --max-length that a fixed-length export cannot take, before anything is written.
    """
    check_out_path(out)
    calibration_set = fit_to_model(text_calibration_set(text_path, tokenizer_dir, max_length, count, seed), model)
    write_set(out, calibration_set.arrays, calibration_set.manifest)
    return calibration_set


def check_max_length(max_length: int) -> None:
    if max_length < MIN_MAX_LENGTH:
        raise CalibrationError(
            f"--max-length {max_length} leaves no room for text: every row starts and ends with a special token",
            f"use --max-length {MIN_MAX_LENGTH} or more, typically the model's sequence length (e.g. 128)",
        )


def read_lines(text_path: Path, count: int | None, seed: int | None) -> list[str]:
    """The first `count` non-blank lines, or with a seed `count` lines drawn at random (kept in file order)."""
    if not text_path.is_file():
        problem = "is a folder" if text_path.is_dir() else "does not exist"
        raise CalibrationError(f"text file '{text_path}' {problem}", TEXT_FIX)
    try:
        with open(text_path, encoding="utf-8-sig") as handle:
            lines = list(islice(_non_blank(handle), count if seed is None else None))
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"'{text_path}' is not UTF-8 text ({exc.reason} at byte {exc.start})",
                               "convert it, e.g. iconv -t UTF-8, or pass another file") from exc
    except OSError as exc:
        raise CalibrationError(f"cannot read text file '{text_path}': {exc}", TEXT_FIX) from exc
    if not lines:
        raise CalibrationError(f"text file '{text_path}' holds no text (every line is blank)", TEXT_FIX)
    if count is not None and count > len(lines):
        raise CalibrationError(
            f"--count {count} is larger than the source: '{text_path}' has only {len(lines)} non-blank lines",
            f"use --count {len(lines)} or fewer, or add text",
        )
    if seed is not None and count is not None:
        chosen = np.sort(np.random.default_rng(seed).choice(len(lines), count, replace=False))
        lines = [lines[i] for i in chosen]
    return lines


def _non_blank(handle) -> Iterator[str]:
    for line in handle:
        if line.strip():
            yield line.strip()


def tokenize(tokenizer, lines: list[str], max_length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Padded, truncated int64 arrays keyed as the tokenizer names them, and every line's un-truncated length."""
    special = tokenizer.num_special_tokens_to_add()
    if max_length < max(special, MIN_MAX_LENGTH):
        raise CalibrationError(f"--max-length {max_length} is shorter than the tokenizer's {special} special tokens",
                               f"use --max-length {special + 1} or more")
    full_lengths = np.array([len(ids) for ids in tokenizer(lines, truncation=False, verbose=False)["input_ids"]])
    try:
        encoded = tokenizer(lines, padding="max_length", truncation=True, max_length=max_length,
                            return_attention_mask=True, return_tensors="np")
    except ValueError as exc:  # e.g. a GPT-style tokenizer without a padding token
        raise CalibrationError(f"the tokenizer cannot pad to --max-length {max_length}: {' '.join(str(exc).split())[:200]}",
                               "use the tokenizer of a BERT-family encoder, or set pad_token in its tokenizer_config.json") from exc
    arrays = {name: np.ascontiguousarray(np.asarray(values, dtype=np.int64)) for name, values in encoded.items()}
    return arrays, full_lengths


def describe_text(tokenizer, tokenizer_dir: Path, max_length: int, full_lengths: np.ndarray,
                  attention_mask: np.ndarray) -> dict[str, Any]:
    """The manifest's `text` section: which tokenizer, and how well the lines fit `max_length`."""
    return {
        "tokenizer": {
            "location": str(tokenizer_dir),
            "class": type(tokenizer).__name__,
            "files": [path.name for path in tokenizer_files(tokenizer_dir)],
            "sha256": tokenizer_sha256(tokenizer_dir),
        },
        "lines": len(full_lengths),
        "max_length": max_length,
        "length_distribution": length_distribution(full_lengths),
        "truncated": int(np.sum(full_lengths > max_length)),
        "padding_fraction": round(float(1.0 - attention_mask.mean()), 4),
    }


def length_distribution(lengths: np.ndarray) -> dict[str, float | int]:
    """Token counts with special tokens, before truncation; percentiles are lengths that occur (method 'higher')."""
    return {
        "min": int(lengths.min()),
        "p50": int(np.percentile(lengths, 50, method="higher")),
        "p90": int(np.percentile(lengths, 90, method="higher")),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
    }


def text_findings(text: dict[str, Any], model_length_limit: int | None) -> list[str]:
    """Warnings about a --max-length that does not fit the text (or the model); none of them stops the set."""
    max_length, lengths = text["max_length"], text["length_distribution"]
    findings = []
    if text["padding_fraction"] > PADDING_LIMIT:
        advice = (f"lower --max-length to about the p90 length, {lengths['p90']}" if lengths["p90"] < max_length
                  else f"the lengths are very uneven (p50 {lengths['p50']}, p90 {lengths['p90']})")
        findings.append(f"most of each row is padding ({text['padding_fraction']:.0%} of attention_mask is 0 "
                        f"at --max-length {max_length}): {advice}")
    share = text["truncated"] / text["lines"]
    if share > TRUNCATED_LIMIT:
        target = lengths["p90"] if model_length_limit is None else min(lengths["p90"], model_length_limit)
        advice = (f"raise --max-length to about the p90 length, {target}" if target > max_length
                  else f"the model takes at most {model_length_limit} tokens: split longer passages over several lines")
        findings.append(f"{text['truncated']} of {text['lines']} lines ({share:.0%}) are longer than --max-length {max_length} "
                        f"and were truncated: {advice}")
    if model_length_limit is not None and max_length > model_length_limit:
        findings.append(f"--max-length {max_length} is longer than the tokenizer's model_max_length {model_length_limit}: "
                        "the model's position embeddings likely stop there")
    return findings


def _model_length_limit(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit < UNBOUNDED_MODEL_LENGTH else None
