"""The Iceberg seam: every module that imports pyiceberg lives in this package.

``catalog`` opens the configured catalog and maps its failures to spoold's
errors; ``schema`` turns table specs into Iceberg schemas and validated
columns into Arrow; ``sink`` creates and evolves tables, keeps the
committed-key index and commits with an owned retry; ``snapshots`` commits
cheaply, makes new files durable and trims history. The capture side
(``spoold append``, the Python producer API, the spool, the tailer) never
imports this package.
"""
