"""compress: PyTorch compression before export — training, distillation (hard CE + T²-scaled KL, features),
unstructured and structured channel pruning along the dependency graph, the accuracy gate, data-parallel training.

May import: core, source.
"""
