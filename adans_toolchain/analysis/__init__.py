"""Analysis of the exported ONNX graph: shapes, compute sites, coupled channel groups."""
