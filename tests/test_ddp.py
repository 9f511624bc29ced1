import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.compress_fixtures import tiny_cnn, tiny_splits

ROOT = Path(__file__).resolve().parents[1]


def distill_command(tmp_path: Path, out: str) -> list[str]:
    return ["-m", "edgecompress.compress.ddp", "--teacher", "tests.compress_fixtures:ddp_teacher", "--student", "cnn-tiny",
            "--data", str(tmp_path / "data.npz"), "--epochs", "2", "--batch-size", "32", "--alpha", "0.5",
            "--feature", "features.1=features.3", "--out", str(tmp_path / out)]


def run(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "EDGECOMPRESS_QUIET": "1"}
    completed = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.slow  # two torchrun processes distil a student
def test_two_torchrun_processes_distil_the_same_student_as_one(tmp_path):
    splits = tiny_splits(160)
    np.savez(tmp_path / "data.npz", x=np.concatenate([splits.train.x, splits.val.x, splits.test.x]),
             y=np.concatenate([splits.train.y, splits.val.y, splits.test.y]))
    run(distill_command(tmp_path, "single.pt"))
    run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *distill_command(tmp_path, "ddp.pt")])
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    parallel = torch.load(tmp_path / "ddp.pt", weights_only=True)
    initial = tiny_cnn((8, 16, 32)).state_dict()
    assert any(not torch.equal(initial[k], single[k]) for k in single if k.endswith("weight"))  # it trained
    for name, tensor in single.items():
        torch.testing.assert_close(parallel[name].float(), tensor.float(), atol=1e-4, rtol=1e-3, msg=name)


def test_cross_rank_batch_norm_keeps_torch_running_statistics_with_cumulative_momentum(monkeypatch):
    """momentum=None (a cumulative average) used to fail with `1 - None` once statistics were shared across ranks."""
    import torch.distributed.nn.functional as distributed_functional

    from edgecompress.compress import parallel

    monkeypatch.setattr(parallel, "world", lambda: (0, 2))  # two ranks...
    monkeypatch.setattr(distributed_functional, "all_reduce", lambda totals: totals)  # ...the other one adds nothing
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4) for _ in range(3)]
    shared, plain = torch.nn.BatchNorm2d(3, momentum=None), torch.nn.BatchNorm2d(3, momentum=None)
    with parallel._cross_rank_batchnorms(shared):
        for batch in batches:
            torch.testing.assert_close(shared(batch), plain(batch))
    torch.testing.assert_close(shared.running_mean, plain.running_mean)
    torch.testing.assert_close(shared.running_var, plain.running_var)
    assert int(shared.num_batches_tracked) == int(plain.num_batches_tracked) == 3
