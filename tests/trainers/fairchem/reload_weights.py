"""Run with the FairChem env's python: build the model a manifest describes and load best_model.pt strictly.

    python reload_weights.py RUN_DIR/artifacts/manifest.json   -> prints "ok <n_parameters>"
"""
import json
import os
import sys

import torch
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import setup_imports

manifest_path = sys.argv[1]
manifest = json.load(open(manifest_path))
model_cfg = dict(manifest["model"])
name = model_cfg.pop("name")
setup_imports()
model = registry.get_model_class(name)(**model_cfg)
state = torch.load(os.path.join(os.path.dirname(manifest_path), manifest["weights"]["path"]), map_location="cpu",
                   weights_only=True)
result = model.load_state_dict(state, strict=True)
print("ok", sum(p.numel() for p in model.parameters()), type(model).__name__)
