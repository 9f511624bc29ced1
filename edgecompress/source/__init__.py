"""source: where a model comes from — one loader for .onnx, TorchScript .pt, torch.export .pt2 and
package.module:factory + state_dict (torch.load(weights_only=True) only); tensor/input specs; the model zoo and the
digits data.

May import: core, device (the preprocessing spec).
"""
