"""`psft demo`: `psft compare` on the built-in tiny model and task suite (see psft.compare)."""

from psft.compare import demo_main as main

__all__ = ["main"]
