"""Feature insight: per-feature indexes (statistics, top contexts, logit effects, labels).

``build_index`` (``saeserve index`` on the command line) measures every latent of an SAE
over a corpus; ``FeatureIndex`` stores the result compactly and answers ``feature(f)``
(the GetFeature RPC); ``search`` ranks features against a text query (SearchFeatures).
Importing this package does not import the model code; ``build_index`` does on call.
"""

from saeserve.insight.explanations import read_explanations
from saeserve.insight.index import build_index
from saeserve.insight.search import SearchHit, search
from saeserve.insight.store import (
    ContextExample,
    FeatureIndex,
    FeatureInfo,
    IndexMeta,
    QuantileBand,
    TokenEffect,
)

__all__ = [
    "ContextExample",
    "FeatureIndex",
    "FeatureInfo",
    "IndexMeta",
    "QuantileBand",
    "SearchHit",
    "TokenEffect",
    "build_index",
    "read_explanations",
    "search",
]
