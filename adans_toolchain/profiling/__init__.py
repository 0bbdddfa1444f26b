"""Profiling latency lookup tables on the device (`adans-profile`).

- `grid`: which channel counts are measured per kernel family;
- `graphs`: single-kernel ONNX graphs at those counts;
- `timing`: timing them in ONNX Runtime (packed, profiled, interleaved);
- `profiler`: families of the given models -> measurements -> table file;
- `cli`: the `adans-profile` command.

The table format and the model that reads it live in `cost_models.lut` and
`cost_models.latency`. See README.md here for profiling on a Jetson.
"""
