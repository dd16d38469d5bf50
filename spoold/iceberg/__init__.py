"""The Iceberg seam: every module that imports pyiceberg lives in this package.

``catalog`` opens the configured catalog and maps its failures to spoold's
errors; ``tables`` loads, creates and evolves tables; ``schema`` turns table
specs into Iceberg schemas and batches into Arrow; ``sink`` keeps the
committed-key index (``committed``) and commits with an owned retry,
reporting what it did through the events it is handed; ``snapshots`` commits
cheaply and makes new files durable; ``peek`` reads metadata for
``spoold status`` without the Iceberg stack; ``properties`` names what spoold
writes into metadata. ``maintain/`` is table maintenance behind the same
seam (docs/maintenance.md). Nothing here imports the spool, flush, backfill,
daemon or command-line side (tests/test_layout.py checks it).
"""
