"""Device descriptions: frozen facts about where a compiled model will run.

Hardware numbers live only here (as TOML data beside this file), never in
code. The `host` target is detected at run time from the machine itself.
"""

from __future__ import annotations

from .target import Target, TargetDescriptorError, UnknownTargetError, known_target_ids, load_target

__all__ = ["Target", "TargetDescriptorError", "UnknownTargetError", "known_target_ids", "load_target"]
