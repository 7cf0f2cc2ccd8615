"""Sparse autoencoders: the module, SAELens-compatible files, training and metrics.

Usable on its own: `from saelab.sae import SAE; sae = SAE.load("runs/x/saes/HOOK")`.
"""

from saelab.sae.model import ARCHITECTURES, SAE, SAEConfig

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig"]
