"""export: a torch module or a third-party ONNX file -> one checked fp32 ONNX model (opset >= 17, dynamic
batch, shape-inferred, simplified, checked against PyTorch).

May import: core, source.
"""
