"""Every name under the spool root, defined once (the spool's own files, the daemon's and the commands' state).

See docs/spool-layout.md for what each holds and who writes it.
"""

from __future__ import annotations

DAEMON_STATE = ".daemon.json"  # the running daemon's view (daemon/report.py), read by `spoold status`
LAST_FLUSH = ".last-flush.json"  # per table: this spool's last flush attempt (flush/flush.py)
LAST_MAINTENANCE = ".last-maintenance.json"  # per table: this spool's last maintenance run (cli, daemon)
