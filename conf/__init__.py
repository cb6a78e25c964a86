"""Hydra config groups of mlip-launch (a package so installed copies find the YAML files)."""
