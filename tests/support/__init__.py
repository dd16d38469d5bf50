"""Helpers shared by the test suite, defined once: ``from support.<module> import ...``.

``tests/`` is on ``sys.path`` (pyproject's ``pythonpath``), so the test files, the
conftest and the subprocesses the tests start (with ``tests/`` on ``PYTHONPATH``)
all import these the same way.
"""
