"""The capture side: the on-disk spool, its files and names, bounds, held copies, quarantine."""
