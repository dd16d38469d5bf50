"""Rate-limited error logs: a failure that keeps recurring is logged once, then at most once per interval."""

from __future__ import annotations


class LogLimiter:
    """Rate limit for repeated error logs: the first one, then at most one per ``interval_s`` per key.

    ``allow`` returns None when this occurrence should stay silent, else how
    many were suppressed since the last one logged (to say "and N more").
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def note(self, key: str, now: float) -> str | None:
        """None when this occurrence should stay silent; else a suffix for the log line counting the silent ones."""
        suppressed = self.allow(key, now)
        if suppressed is None:
            return None
        return f" ({suppressed} more since the last report)" if suppressed else ""

    def forget(self, key: str) -> None:
        """The condition cleared: the next occurrence is logged at once."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)
