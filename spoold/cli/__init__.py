"""The command line: entry point, grammar, and the light `append` path."""

from spoold.cli.entry import main

__all__ = ["main"]
