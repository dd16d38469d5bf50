"""What every format shares: the error a source line that cannot be materialized raises."""

from __future__ import annotations


class SourceLineError(ValueError):
    """A source line cannot be materialized; the message says why in a few words."""
