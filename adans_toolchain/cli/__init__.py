"""Command lines: adans-compile and adans-profile, and the one-line error reporter."""
