"""The backend names this package serves, and the FairChem model names each accepts in a config."""
from __future__ import annotations

MODEL_NAMES = {"equiformer_v2": ("equiformer_v2", "equiformer_v2_backbone"),
               "gemnet_oc": ("gemnet_oc", "gemnet_oc_backbone")}
BACKENDS = tuple(MODEL_NAMES)
