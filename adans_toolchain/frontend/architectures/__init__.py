"""Architectures bundled with adans (built-in names for `--arch`)."""
