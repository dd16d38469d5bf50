"""Flush: rotate, read with THE rules, quarantine, settle, commit, clean up; and quarantine replay."""
