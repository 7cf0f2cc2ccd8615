"""saelab: sparse-autoencoder experiments on language models, planned to fit the machine."""

from saelab.errors import SaelabError

__version__ = "0.1.0"

__all__ = ["SaelabError", "__version__"]
