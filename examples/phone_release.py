"""A small digits CNN -> an int8 ONNX Runtime Mobile engine (.ort) for Android phones, as a signed release that is
then checked the way an app checks it before running it: signature, every hash, runtime version, golden outputs.

python examples/phone_release.py [VERSION]   (default 1.0.0; a released version is never rewritten: bump it)
The release key (release-key, release-key.pub) is made on the first run and reused: an app pins release-key.pub.
"""
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import edgecompress
from edgecompress.device.app_release import load_release
from edgecompress.ship.signing import generate_keypair
from edgecompress.source.data import digits_splits
from edgecompress.source.zoo import build_model

version, key = sys.argv[1] if len(sys.argv) > 1 else "1.0.0", Path("release-key")
digits = digits_splits()  # scikit-learn's handwritten digits as 1x32x32 images with labels: train / val / test
train, test = (DataLoader(TensorDataset(torch.tensor(p.x), torch.tensor(p.y)), batch_size=64) for p in (digits.train, digits.test))
torch.manual_seed(0)  # the same weights every run
model = build_model("cnn-small").eval()  # a zoo CNN, untrained here: put your own trained nn.Module in its place
print(edgecompress.build(model, calib=train, eval_data=test, targets=["android-arm64"], out="build/phone").summary())
if not key.is_file():
    generate_keypair(key)  # what `edgecompress keygen --out release-key` writes
made = edgecompress.release("build/phone", targets="android-arm64", out="release", version=version, sign=key)
app = load_release(made.version_dir, Path("release-key.pub"), "android-arm64")  # refuses (ReleaseRefused) on any failed check
print(f"{made.version_dir} verified, loaded on onnxruntime {app.runtime_version}, golden check passed")
print("class of the first test digit:", app.run({app.manifest["inputs"][0]["name"]: digits.test.x[:1]})[0].argmax())
