"""edgecompress.build() from Python: a torch model and DataLoaders in, a verified int8 CPU engine out (trains nothing)."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgecompress
from edgecompress.source.data import digits_splits
from edgecompress.source.zoo import build_model

digits = digits_splits()  # scikit-learn's handwritten digits as 1x32x32 images with labels: train / val / test
train, test = (DataLoader(TensorDataset(torch.tensor(p.x), torch.tensor(p.y)), batch_size=64) for p in (digits.train, digits.test))
model = build_model("cnn-small").eval()  # a zoo CNN, untrained here: put your own trained nn.Module in its place
result = edgecompress.build(model, calib=train, eval_data=test, targets=["cpu"], out="build/python")
print(result.summary())
engine = result.load("cpu")  # runs like the model: tensors or arrays in, numpy out
print("classes of 8 test digits:", engine(torch.tensor(digits.test.x[:8])).argmax(axis=1))
