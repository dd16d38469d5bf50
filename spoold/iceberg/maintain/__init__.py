"""Table maintenance behind the Iceberg seam: compaction, expiry, orphan cleanup."""
