"""The Iceberg seam: every module that imports pyiceberg lives in this package.

``catalog`` opens the configured catalog and maps its failures to spoold's
errors; ``schema`` turns table specs into Iceberg schemas and validated
columns into Arrow; ``sink`` creates and evolves tables, keeps the
committed-key index and commits with an owned retry; ``snapshots`` commits
cheaply and makes new files durable. Maintenance (docs/maintenance.md):
``compact`` and ``rewrite`` (small files into one ``replace`` snapshot),
``expire`` (history and the files only it referenced), ``orphans`` and
``reachable`` (unreferenced files), ``maintain`` (a run as bounded steps)
and ``upkeep`` (the daemon's side). The capture side
(``spoold append``, the Python producer API, the spool, the tailer) never
imports this package.
"""
