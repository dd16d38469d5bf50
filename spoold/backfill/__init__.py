"""Backfill: history from source files into tables, never doubling what is committed or spooled."""
