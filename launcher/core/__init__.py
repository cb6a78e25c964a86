"""The kernel every layer builds on: errors and exit codes, the run spec and its generic validation,
spec I/O, the run directory, atomic writes, metrics and environment helpers.

It imports nothing else of this project and no torch at import time (a test checks both), so the
doors, ``data/`` and every backend can depend on it without cycles.
"""
