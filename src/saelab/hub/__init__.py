"""Files from the model hub, fetched one at a time within a disk budget.

`parse_hf_uri` reads `hf://ORG/NAME/PATH[@REVISION]`; `Fetcher` downloads single files into
the huggingface_hub cache, refuses what cannot fit before downloading, and deletes files once
released so a layer-by-layer pipeline never holds more than it needs.
"""

from saelab.hub.fetch import Fetcher, FetchStats
from saelab.hub.uri import HubPath, parse_hf_uri

__all__ = ["FetchStats", "Fetcher", "HubPath", "parse_hf_uri"]
