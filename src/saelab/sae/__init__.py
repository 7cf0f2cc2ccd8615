"""Sparse autoencoders: the module, SAELens-compatible files, pretrained releases, training
and metrics.

Usable on its own: `from saelab.sae import SAE, load; sae = load("runs/x/saes/HOOK")` (any
supported format, local or hf://ORG/NAME/PATH), and `fit(x, arch="topk", k=32, d_sae=4608)`
trains one on an array, a tensor, a store or batches.
"""

from saelab.sae.fit import Fitted, fit
from saelab.sae.model import ARCHITECTURES, SAE, SAEConfig
from saelab.sae.pretrained import load

__all__ = ["ARCHITECTURES", "SAE", "Fitted", "SAEConfig", "fit", "load"]
