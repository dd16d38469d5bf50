"""`spoold run`: the loop, per-table workers, scheduling, systemd, metrics and the HTTP server."""
