"""Compression in PyTorch: training, distillation, pruning and the accuracy gate."""
