"""source: where a model comes from — one loader for .onnx, TorchScript .pt, torch.export .pt2,
package.module:factory + state_dict (torch.load(weights_only=True) only) and Hugging Face checkpoint folders
(transformer encoders, local_files_only); tensor/input specs; the model zoo and the digits data.

May import: core, device (the preprocessing spec).
"""
