"""Feature cards: firing density, activation histogram, top and quantile contexts, logit
lens, group means, contrast statistics and patch effects of chosen SAE features.

    from saelab.inspect import feature_card, inspect_features
    cards = feature_card("runs/demo", "resid_post.7", [3893, 1170])      # compute only
    cards = inspect_features("runs/demo", "resid_post.7", "3893,1170")   # compute and store
"""

from saelab.inspect.accumulate import Context, DoublingHistogram, FeatureAccumulator, TokenBlock
from saelab.inspect.card import FeatureCard, feature_card
from saelab.inspect.render import inspect_features, print_cards
from saelab.inspect.store import load_cards, save_cards

__all__ = [
    "Context",
    "DoublingHistogram",
    "FeatureAccumulator",
    "FeatureCard",
    "TokenBlock",
    "feature_card",
    "inspect_features",
    "load_cards",
    "print_cards",
    "save_cards",
]
