"""Data layer: FairChem-layout LMDB readers and writers, index selection, converters, demo data.

Importing this package never imports torch; only reading a record (``dataset[i]``) does.
"""
from __future__ import annotations

from data.datasets import check_readable, count, detect_format, open_dataset
from data.structure import Structure

__all__ = ["Structure", "check_readable", "count", "detect_format", "open_dataset"]
