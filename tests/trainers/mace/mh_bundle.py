"""A small multi-head MACE model with MACE-MH-1's model type and flags, and the files users of the
original implementation hold for it: a ``.model``, a v1 manifest bundle (manifest + state dict +
model.json in the original description form).

The model is built with mace-torch directly (not through our config code), and the original
description is read off the module the way the original implementation wrote it, so the tests
read files our own code did not produce.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

HEADS = ["matpes_r2scan", "omat_pbe", "spice_wB97M"]
NEW_HEAD = "oc22"
# the demo elements (Ni, Cu, Ag, Pt, Au) and a few more
Z_TABLE = [1, 6, 8, 28, 29, 46, 47, 78, 79]
# every key of MACE-MH-1's model.json, in its order
MH1_KEYS = [
    "model_type", "z_table", "e0_values", "heads", "cutoff", "num_interactions", "num_radial_basis", "radial_type",
    "num_polynomial_cutoff", "interactions", "hidden_irreps", "MLP_irreps", "correlation", "gate",
    "avg_num_neighbors", "products", "readouts", "scale_shift", "max_ell", "num_channels", "interaction_cls",
    "interaction_cls_first", "readout_cls", "use_agnostic_product", "use_reduced_cg", "use_so3",
    "use_last_readout_only", "use_embedding_readout", "pair_repulsion", "distance_transform", "edge_irreps",
    "radial_MLP", "use_edge_irreps_first", "apply_cutoff",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _e0_rows(train_lmdb: Path) -> List[List[float]]:
    """Per-head E0s: a least-squares fit on the demo training set (other elements 0), shifted per head."""
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(train_lmdb)
    a = np.zeros((len(ds), len(Z_TABLE)))
    b = np.zeros(len(ds))
    for i in range(len(ds)):
        s = ds[i]
        b[i] = s.energy
        for z in s.numbers:
            a[i, Z_TABLE.index(int(z))] += 1
    ds.close()
    fit = np.linalg.lstsq(a, b, rcond=None)[0]
    return [(fit + 0.05 * k).tolist() for k in range(len(HEADS))]


def build_mh_model(train_lmdb: Path) -> Any:
    """ScaleShiftMACE as MACE-MH-1 (residual non-linear interactions, agnostic product, ZBL pair
    repulsion, Agnesi transform, edge irreps used from the first layer, no cutoff on the radial
    basis, non-linear readout, one readout per head), 8 channels instead of 512, float32."""
    import torch
    from mace import modules
    from mace.modules import blocks
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(7)
        model = modules.ScaleShiftMACE(
            r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualNonLinearInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualNonLinearInteractionBlock"],
            num_interactions=2, num_elements=len(Z_TABLE), hidden_irreps=o3.Irreps("8x0e+8x1o"),
            MLP_irreps=o3.Irreps("4x0e"), atomic_energies=np.array(_e0_rows(train_lmdb)), avg_num_neighbors=12.0,
            atomic_numbers=Z_TABLE, correlation=2, gate=torch.nn.functional.silu, pair_repulsion=True,
            apply_cutoff=False, use_reduced_cg=False, use_so3=False, use_agnostic_product=True,
            use_last_readout_only=False, use_embedding_readout=False, distance_transform="Agnesi",
            edge_irreps=o3.Irreps("4x0e+4x1o"), use_edge_irreps_first=True, radial_MLP=[16, 16],
            radial_type="bessel", heads=HEADS, readout_cls=blocks.NonLinearReadoutBlock,
            atomic_inter_scale=[0.8, 0.9, 1.0], atomic_inter_shift=[0.0, 0.0, 0.0],
        )
    finally:
        torch.set_default_dtype(old)
    return model


def origin_description(model: Any) -> Dict[str, Any]:
    """The model.json of the original implementation, read off a mace module."""
    from mace.tools.scripts_utils import extract_config_mace_model

    c = extract_config_mace_model(model)
    inter = [{
        "node_feats_irreps": str(b.node_feats_irreps), "edge_attrs_irreps": str(b.edge_attrs_irreps),
        "edge_feats_irreps": str(b.edge_feats_irreps), "target_irreps": str(b.target_irreps),
        "hidden_irreps": str(b.hidden_irreps), "radial_MLP": list(b.radial_MLP),
        "avg_num_neighbors": float(b.avg_num_neighbors),
    } for b in model.interactions]
    prods = [{
        "irreps_out": str(p.linear.irreps_out), "linear_out": int(p.linear.irreps_out.dim),
        "contractions": [{"path_count": int(k.weights_max.shape[1])} for k in p.symmetric_contractions.contractions],
    } for p in model.products]
    reads = [({"hidden_irreps": str(r.hidden_irreps)} if hasattr(r, "hidden_irreps") else {}) for r in model.readouts]
    desc = {
        "model_type": type(model).__name__,
        "z_table": [int(z) for z in model.atomic_numbers],
        "e0_values": model.atomic_energies_fn.atomic_energies.tolist(),
        "heads": list(model.heads),
        "cutoff": float(model.r_max),
        "num_interactions": int(model.num_interactions),
        "num_radial_basis": int(c["num_bessel"]),
        "radial_type": c["radial_type"],
        "num_polynomial_cutoff": int(c["num_polynomial_cutoff"]),
        "interactions": inter,
        "hidden_irreps": str(c["hidden_irreps"]),
        "MLP_irreps": str(c["MLP_irreps"]),
        "correlation": int(c["correlation"]),
        "gate": "silu",
        "avg_num_neighbors": float(c["avg_num_neighbors"]),
        "products": prods,
        "readouts": reads,
        "scale_shift": {"scale": model.scale_shift.scale.tolist(), "shift": model.scale_shift.shift.tolist()},
        "max_ell": int(c["max_ell"]),
        "num_channels": int(c["hidden_irreps"].count((0, 1))),
        "interaction_cls": c["interaction_cls"].__name__,
        "interaction_cls_first": c["interaction_cls_first"].__name__,
        "readout_cls": c["readout_cls"].__name__,
        "use_agnostic_product": bool(c["use_agnostic_product"]),
        "use_reduced_cg": bool(c["use_reduced_cg"]),
        "use_so3": bool(c["use_so3"]),
        "use_last_readout_only": bool(c["use_last_readout_only"]),
        "use_embedding_readout": bool(c["use_embedding_readout"]),
        "pair_repulsion": bool(c["pair_repulsion"]),
        "distance_transform": c["distance_transform"],
        "edge_irreps": str(c["edge_irreps"]),
        "radial_MLP": list(c["radial_MLP"]),
        "use_edge_irreps_first": bool(c["use_edge_irreps_first"]),
        "apply_cutoff": bool(c["apply_cutoff"]),
    }
    assert list(desc) == MH1_KEYS
    return desc


def with_new_head(desc: Dict[str, Any], e0_row: List[float], **extra: Any) -> Dict[str, Any]:
    """The description with a head ``oc22`` appended (as MACE-MH-1/OC22/model.json adds ``oc22``)."""
    out = json.loads(json.dumps(desc))
    out["heads"] = out["heads"] + [NEW_HEAD]
    out["e0_values"] = out["e0_values"] + [list(e0_row)]
    out["scale_shift"] = {"scale": out["scale_shift"]["scale"] + [0.85], "shift": out["scale_shift"]["shift"] + [0.0]}
    # like the original's OC22 file, the per-layer sections still describe the base model
    # (readouts[-1].hidden_irreps: 3 heads x MLP_irreps)
    out.update(extra)
    return out


def write_bundle(root: Path, train_lmdb: Path) -> Dict[str, Path]:
    """``raw/small-mh.model`` and ``manifest_bundle/{small-mh.manifest.json, small-mh.state_dict.pt,
    model.json}`` as the original implementation laid out MACE-MH-1 (once per ``root``)."""
    import mace
    import torch

    root = Path(root)
    paths = {"model": root / "raw" / "small-mh.model", "weights": root / "manifest_bundle" / "small-mh.state_dict.pt",
             "manifest": root / "manifest_bundle" / "small-mh.manifest.json",
             "model_json": root / "manifest_bundle" / "model.json"}
    if paths["manifest"].exists():
        return paths
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    model = build_mh_model(train_lmdb)
    torch.save(model, paths["model"])
    torch.save(model.state_dict(), paths["weights"])
    desc = origin_description(model)
    paths["model_json"].write_text(json.dumps(desc, indent=2))
    manifest = {
        "schema_version": "v1",
        "backend": "mace",
        "backend_version": mace.__version__,
        "source": {"path": "../raw/small-mh.model", "format": "model", "sha256": sha256(paths["model"])},
        "weights": {"path": "small-mh.state_dict.pt", "format": "torch", "sha256": sha256(paths["weights"])},
        "rebuildable": True,
        "io": {"energy_unit": "eV", "force_unit": "eV/Angstrom", "energy_is_total": True},
        "embedding": {"node_embed_layer": "products[-1]", "graph_pool": "mean"},
        "config": desc,
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=2))
    return paths


def energies(model: Any, structures: List[Any], heads: List[str], head: str, r_max: float) -> Any:
    """Total energies of ``structures`` with ``head`` (float32, no forces)."""
    import torch

    from trainers.mace.graphs import collate, to_atomic_data

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        batch = collate(to_atomic_data(structures, Z_TABLE, r_max, heads, head))
        return model(batch.to_dict(), compute_force=False)["energy"].detach()
    finally:
        torch.set_default_dtype(old)
