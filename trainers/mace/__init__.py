"""The core MACE trainer: mace-torch models trained in-process by our own loop.

Import mace before e3nn everywhere in this package (e3nn alone fails to load its constants on
torch 2.13); the backend module itself stays free of torch at import time.
"""
