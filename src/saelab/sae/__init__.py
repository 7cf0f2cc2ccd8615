"""Sparse autoencoders: the module, SAELens-compatible files, pretrained releases, training
and metrics.

Usable on its own: `from saelab.sae import SAE, load; sae = load("runs/x/saes/HOOK")` (any
supported format, local or hf://ORG/NAME/PATH).
"""

from saelab.sae.model import ARCHITECTURES, SAE, SAEConfig
from saelab.sae.pretrained import load

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "load"]
