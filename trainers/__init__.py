"""Backends: the core MACE trainer (in-process) and the FairChem v1 runner (subprocess)."""
