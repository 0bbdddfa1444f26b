"""Frontend: load the user's model and data, export to ONNX with names kept."""
