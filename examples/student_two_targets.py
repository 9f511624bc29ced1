"""The built-in example's student (cnn-wide) from Python, for a CPU and an Android phone (ExecuTorch .pte).

`edgecompress build` distils this student from the digits teacher into build/compress/student.distilled.pt; its
weights load here when that file is there, else the student is untrained (put your own trained module in its place).
The same module as `--model package.module:factory --weights FILE` and the same arrays as `--calib`/`--eval-data`
.npz files give the CLI's engines: the same cache keys and fidelity (tests/test_api_matches_cli.py).
The phone target needs the mobile extra: pip install -e ".[mobile]".
"""
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import edgecompress
from edgecompress.source.data import digits_splits
from edgecompress.source.zoo import build_model

digits, distilled = digits_splits(), Path("build/compress/student.distilled.pt")  # digits: 1x32x32 images, labels
train, test = (DataLoader(TensorDataset(torch.tensor(p.x), torch.tensor(p.y)), batch_size=64) for p in (digits.train, digits.test))
student = build_model("cnn-wide").eval()
if distilled.is_file():
    student.load_state_dict(torch.load(distilled, weights_only=True))
result = edgecompress.build(student, calib=train, eval_data=test, targets=["cpu", "android-arm64-executorch"], out="build/student")
print(result.summary())
print("classes of 8 test digits:", result.load("cpu")(torch.tensor(digits.test.x[:8])).argmax(axis=1))
