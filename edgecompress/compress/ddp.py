"""torchrun launcher: distil a student data-parallel (gloo on CPU); the data-parallel mechanics are in
`edgecompress.compress.parallel`. Launch with:

    torchrun --nproc_per_node 2 -m edgecompress.compress.ddp --student cnn-tiny --data digits --out student.pt
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from edgecompress.compress.parallel import is_main_process


def main(argv: list[str] | None = None) -> None:
    """torchrun entry point: distil a student from a teacher on labelled data, save the student."""
    import argparse
    import os
    from pathlib import Path

    from edgecompress.core.artifacts import atomic_path

    from edgecompress.compress.distill import DistillConfig, distill
    from edgecompress.compress.sources import load_labelled_data, load_model, parse_feature_pairs
    from edgecompress.compress.trainer import TrainConfig, seed_everything

    parser = argparse.ArgumentParser(prog="torchrun -m edgecompress.compress.ddp", description=main.__doc__)
    parser.add_argument("--teacher", required=True, help="zoo name, package.module:factory or a saved .pt module")
    parser.add_argument("--student", required=True, help="zoo name, package.module:factory or a saved .pt module")
    parser.add_argument("--data", default="digits", help="digits, an image folder or a .npz with x and y")
    parser.add_argument("--out", required=True, help="where rank 0 writes the student's state_dict")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--feature", action="append", default=[], help="student_layer=teacher_layer (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    try:
        splits = load_labelled_data(args.data)
        seed_everything(args.seed)  # the same initial student (and adapters) in every process
        teacher, student = load_model(args.teacher), load_model(args.student)
        config = DistillConfig(args.alpha, args.temperature, parse_feature_pairs(args.feature))
        train_config = TrainConfig(args.epochs, args.batch_size, args.lr, seed=args.seed, patience=args.epochs)
        distill(student, teacher, splits.train, splits.val, train_config, config)
        if is_main_process():
            with atomic_path(Path(args.out)) as tmp:
                torch.save(student.state_dict(), tmp)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
