"""ONNX Runtime: the one session recipe and speed measurement."""
