"""Quantization-aware fine-tuning across processes: `finetune` under torchrun (gloo on CPU), each process on its share
of every global batch, gradients averaged (edgecompress.compress.parallel), so N processes train what one process
trains, up to float noise (test_qat.py states the tolerance). For hosts with more than one socket, or machines: the
build starts it with `--qat-processes N`; by hand, from a job file `write_job` wrote:

    torchrun --standalone --nproc_per_node 2 -m edgecompress.quantize.qat_ddp JOB.json

Each process reads the same job (model files, training inputs, recipe, options); the first writes the fine-tuned
graph and `<out>.result.json` (the QatResult), which `run_job` reads back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgecompress.core.artifacts import save_npz, write_json_atomic
from edgecompress.core.errors import QuantizationError
from edgecompress.quantize.qat import QatOptions, QatResult, QuantPlan, finetune
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.source.layout import BatchLayout


def write_job(folder: Path, prepared: Path, qdq: Path, inputs: dict[str, np.ndarray], layout: BatchLayout,
              recipe: QuantRecipe, options: QatOptions, out_path: Path) -> Path:
    """The job file (and the training inputs beside it) that every process of a run reads."""
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(folder / "inputs.npz", inputs)
    job = {"prepared": str(prepared), "qdq": str(qdq), "inputs": str(folder / "inputs.npz"),
           "layout": {"axes": layout.axes, "fixed_batch": layout.fixed_batch}, "recipe": recipe.to_dict(),
           "options": asdict(options), "out": str(out_path)}
    return write_json_atomic(folder / "job.json", job)


def result_path(out_path: Path) -> Path:
    return Path(f"{out_path}.result.json")


def run_job(job_path: Path, processes: int, timeout: float) -> QatResult:
    """Run the job in `processes` processes under torchrun, the host's cores split between them; its QatResult."""
    job = json.loads(Path(job_path).read_text())
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "edgecompress.quantize.qat_ddp", str(job_path)]
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise QuantizationError(f"quantization-aware training in {processes} processes ran past {timeout:.0f} s",
                                "raise --qat-minutes, or run it in one process (--qat-processes 1)") from exc
    if completed.returncode != 0:
        last = " ".join(completed.stderr.strip().splitlines()[-3:])[-400:]
        raise QuantizationError(f"quantization-aware training in {processes} processes failed (exit {completed.returncode}): {last}",
                                "run it in one process (--qat-processes 1), or see the error above")
    return read_result(Path(job["out"]))


def read_result(out_path: Path) -> QatResult:
    data = json.loads(result_path(out_path).read_text())
    plan = QuantPlan.from_activation_record(data.pop("activations"))
    return QatResult(model_path=Path(data.pop("model_path")), plan=plan, **data)


def _write_result(result: QatResult) -> None:
    data = {**{k: v for k, v in asdict(result).items() if k != "plan"}, "model_path": str(result.model_path),
            "activations": result.plan.activation_record()}
    write_json_atomic(result_path(result.model_path), data)


def main(argv: list[str] | None = None) -> None:
    """torchrun entry point: fine-tune the job's graph in this process's share of each batch."""
    import torch
    import torch.distributed as dist

    from edgecompress.compress.parallel import is_main_process

    job_path = Path((argv if argv is not None else sys.argv[1:])[0])
    job = json.loads(job_path.read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    try:
        options = job["options"]
        options["loss_kinds"] = tuple(options["loss_kinds"])
        with np.load(job["inputs"]) as stored:
            inputs = {name: stored[name] for name in stored.files}
        layout = BatchLayout({k: v for k, v in job["layout"]["axes"].items()}, job["layout"]["fixed_batch"])
        result = finetune(Path(job["prepared"]), Path(job["qdq"]), inputs, layout, QuantRecipe.from_dict(job["recipe"]),
                          QatOptions(**options), Path(job["out"]))
        if is_main_process():
            _write_result(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
