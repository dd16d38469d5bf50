"""Rows over the network: ``[ingest] listen`` (docs/ingest.md). One more producer of the spool."""
