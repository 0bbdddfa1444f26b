"""Search-time transforms: how a Plan changes parameter values (never the architecture)."""
