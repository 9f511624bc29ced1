"""A small digits CNN -> an int8 engine for an IoT device, bundled, signed and shipped over SSH, where the device
verifies and self-tests it before it becomes `current` (what `edgecompress ship` does).

python examples/ship_to_device.py USER@HOST[:PORT]:/PATH [TARGET] [DEVICE_PYTHON]
e.g. pi@raspberrypi.local:/opt/models raspberry-pi-5. TARGET defaults to cpu (an x86-64 device); the device's arch must
match it. Logs in with ssh-agent or your ~/.ssh keys; the host key must be in ~/.ssh/known_hosts (ssh to it once).
DEVICE_PYTHON (default python3) runs the checks there and needs numpy and onnxruntime.
"""
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import edgecompress
from edgecompress.ship.signing import generate_keypair
from edgecompress.source.data import digits_splits
from edgecompress.source.zoo import build_model

device, target = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cpu"
digits, key = digits_splits(), Path("release-key")  # digits: 1x32x32 images with labels
train, test = (DataLoader(TensorDataset(torch.tensor(p.x), torch.tensor(p.y)), batch_size=64) for p in (digits.train, digits.test))
torch.manual_seed(0)  # the same weights every run
model = build_model("cnn-small").eval()  # a zoo CNN, untrained here: put your own trained nn.Module in its place
print(edgecompress.build(model, calib=train, eval_data=test, targets=[target], out="build/iot").summary())
if not key.is_file():
    generate_keypair(key)  # what `edgecompress keygen --out release-key` writes; devices trust release-key.pub
bundle = edgecompress.bundle("build/iot", target=target, sign=key)  # build/iot/TARGET/bundle.tar.gz
[shipped] = edgecompress.ship_bundle(bundle.path, device, verify_key="release-key.pub",
                                     remote_python=sys.argv[3] if len(sys.argv) > 3 else "python3")
print(f"{shipped.destination}: " + (f"release {shipped.release} is current, checked by {shipped.checked_by}"
                                    if shipped.ok else f"FAILED, {shipped.reason}"))
sys.exit(0 if shipped.ok else 1)
