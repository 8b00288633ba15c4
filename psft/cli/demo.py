"""`psft demo`: `psft compare` on the built-in tiny model and task suite (psft.cli.compare, psft.experiments)."""

from psft.cli.compare import demo_main as main

__all__ = ["main"]
