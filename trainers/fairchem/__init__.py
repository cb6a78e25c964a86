"""FairChem v1 backends (EquiformerV2, GemNet-OC): FairChem's native trainer in its own environment.

``backend.FairchemBackend`` implements the common interface; ``derive`` builds the config a run
uses, ``child`` runs inside the FairChem env, ``predictions`` turns FairChem's output into our
evaluation files. Nothing here imports torch in the launcher process.
"""
