"""A local Hugging Face tokenizer folder: found, hashed and loaded without ever touching the network.

The hash covers only the files that decide how text becomes token ids, not a checkpoint's weights
beside them: the same tokenizer in two model folders hashes the same, and re-running the calib step
with a different vocabulary is seen as a different set by every cache that reads the manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edgecompress.core.errors import CalibrationError
from edgecompress.core.logs import third_party_output

# The files `AutoTokenizer.from_pretrained` reads for WordPiece (BERT), BPE (RoBERTa, GPT-2) and SentencePiece models.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# Any one of these holds a vocabulary; a folder with only tokenizer_config.json cannot tokenize.
VOCABULARY_FILES = tuple(name for name in TOKENIZER_FILES if name not in
                         ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"))
# AutoTokenizer picks the tokenizer class from one of these (config.json: the model type of a full checkpoint).
CLASS_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")
INSTALL_FIX = 'pip install "edgecompress[transformers]"'
TOKENIZER_DIR_FIX = "pass --tokenizer a folder saved by `tokenizer.save_pretrained(DIR)` (tokenizer.json, or vocab.txt + tokenizer_config.json)"


def tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    """The tokenizer's files in `tokenizer_dir`, sorted by name; refuses a folder that holds no vocabulary."""
    tokenizer_dir = Path(tokenizer_dir).expanduser()
    if not tokenizer_dir.is_dir():
        problem = "is a file, not a folder" if tokenizer_dir.exists() else "does not exist"
        raise CalibrationError(f"tokenizer folder '{tokenizer_dir}' {problem}", TOKENIZER_DIR_FIX)
    files = sorted((tokenizer_dir / name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()), key=lambda p: p.name)
    if not any(path.name in VOCABULARY_FILES for path in files):
        raise CalibrationError(
            f"'{tokenizer_dir}' holds no tokenizer (none of {', '.join(VOCABULARY_FILES)})", TOKENIZER_DIR_FIX
        )
    return files


def tokenizer_sha256(tokenizer_dir: Path) -> str:
    """sha256 over the tokenizer's files (name, size and bytes of each, sorted by name)."""
    digest = hashlib.sha256()
    for path in tokenizer_files(tokenizer_dir):
        data = path.read_bytes()
        digest.update(f"{path.name}|{len(data)}|".encode())
        digest.update(data)
    return digest.hexdigest()


def load_tokenizer(tokenizer_dir: Path) -> Any:
    """`AutoTokenizer.from_pretrained(DIR, local_files_only=True)`, with each way it fails said as problem + fix.

    transformers is imported here, not at module import: it is an optional extra that only text sets need.
    """
    tokenizer_dir = Path(tokenizer_dir).expanduser()
    files = tokenizer_files(tokenizer_dir)  # a missing or empty folder is named plainly, not as an invalid hub repo id
    if not any((tokenizer_dir / name).is_file() for name in CLASS_FILES):
        raise CalibrationError(
            f"'{tokenizer_dir}' has {', '.join(path.name for path in files)} but nothing that says which tokenizer "
            f"reads it (none of {', '.join(CLASS_FILES)})",
            'add tokenizer_config.json with {"tokenizer_class": "BertTokenizer"} (or your model\'s class), '
            "or re-save the tokenizer with save_pretrained(DIR)",
        )
    try:
        with third_party_output("transformers"):  # it imports torchao, whose import is noisy
            from transformers import AutoTokenizer
    except ImportError as exc:
        raise CalibrationError(
            f"text calibration needs the Hugging Face tokenizers (transformers), which cannot be imported: {exc}",
            INSTALL_FIX,
        ) from exc
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CalibrationError(f"cannot load the tokenizer in '{tokenizer_dir}': {reason}", TOKENIZER_DIR_FIX) from exc
