"""Accuracy of candidate Plans: one Evaluator contract, the PyTorch and ONNX Runtime evaluators, the resumable cache, executors."""
