"""GetFeature and SearchFeatures answers from the replica's feature indexes.

An SAE with an index (``saeserve index``) answers with its statistics, top contexts,
quantile samples and explanation. One without still answers GetFeature with what the
weights alone tell: the promoted and suppressed tokens (``saeserve.engine.feature_math``,
the same numbers the index stores), with ``has_statistics`` false. Either way the
decoder- and encoder-cosine neighbours are computed from the weights on each request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from saeserve.engine.feature_math import feature_token_effects, nearest_features
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import FeatureNeighbour, TokenEffect
from saeserve.errors import InvalidArgument, NotFound
from saeserve.insight.search import search
from saeserve.insight.store import ContextExample, FeatureIndex, FeatureInfo
from saeserve.v1 import saeserve_pb2 as pb

log = logging.getLogger(__name__)
N_LOGIT_TOKENS = 10
N_NEIGHBOURS = 10
_SOURCES = {
    "imported": pb.EXPLANATION_SOURCE_IMPORTED,
    "generated": pb.EXPLANATION_SOURCE_GENERATED,
}


class FeatureView:
    def __init__(self, served: ServedModel, indexes: Mapping[str, FeatureIndex]) -> None:
        self.served = served
        self.indexes = dict(indexes)

    @classmethod
    def load(cls, served: ServedModel, folders: Mapping[str, Path]) -> FeatureView:
        indexes = {}
        for sae_id, folder in folders.items():
            if folder.is_dir():
                indexes[sae_id] = FeatureIndex.load(folder)
                log.info("feature index for %s: %s", sae_id, folder)
        return cls(served, indexes)

    def has_index(self, sae_id: str) -> bool:
        return sae_id in self.indexes

    def get(self, sae_id: str, feature: int) -> pb.GetFeatureResponse:
        hooked = self.served.sae(sae_id, field_name="get_feature.sae")
        d_sae = hooked.sae.d_sae
        if not 0 <= feature < d_sae:
            raise NotFound(
                f"get_feature.feature: {feature} is not in [0, {d_sae}) of SAE {sae_id!r}"
            )
        out = pb.GetFeatureResponse(feature=pb.FeatureRef(sae=sae_id, feature=feature))
        neighbours = nearest_features(hooked.sae, feature, N_NEIGHBOURS)
        out.decoder_neighbours.extend(_neighbours(neighbours.decoder))
        out.encoder_neighbours.extend(_neighbours(neighbours.encoder))
        index = self.indexes.get(sae_id)
        if index is None:
            promoted, suppressed = feature_token_effects(
                self.served.lm, hooked.sae, feature, N_LOGIT_TOKENS
            )
            out.top_promoted.extend(_token_effects(promoted))
            out.top_suppressed.extend(_token_effects(suppressed))
            return out
        _fill(out, index.feature(feature), index.meta.n_tokens)
        return out

    def search(self, query: str, sae_id: str, limit: int) -> pb.SearchFeaturesResponse:
        if sae_id:
            self.served.sae(sae_id, field_name="search_features.sae")
            if sae_id not in self.indexes:
                raise InvalidArgument(
                    f"search_features.sae: SAE {sae_id!r} has no feature index to search"
                )
            indexes = {sae_id: self.indexes[sae_id]}
        else:
            indexes = self.indexes
        out = pb.SearchFeaturesResponse()
        for hit in search(indexes, query, limit):
            out.matches.add(
                feature=pb.FeatureRef(sae=hit.sae, feature=hit.feature),
                score=hit.score,
                explanation=pb.Explanation(
                    text=hit.explanation,
                    source=_SOURCES.get(hit.explanation_source, pb.EXPLANATION_SOURCE_UNSPECIFIED),
                ),
                top_tokens=indexes[hit.sae].top_tokens(hit.feature),
            )
        return out


def _fill(out: pb.GetFeatureResponse, info: FeatureInfo, n_tokens: int) -> None:
    out.has_statistics = True
    out.density = info.density
    out.max_activation = info.max_activation
    out.mean_activation = info.mean_activation
    out.tokens_indexed = n_tokens
    out.histogram.bin_edges.extend(info.histogram_edges)
    out.histogram.counts.extend(info.histogram_counts)
    out.top_contexts.extend(_contexts(info.contexts))
    for band in info.quantiles:
        out.quantiles.add(
            min_activation=band.low, max_activation=band.high, contexts=_contexts(band.contexts)
        )
    out.top_promoted.extend(_token_effects(info.promoted))
    out.top_suppressed.extend(_token_effects(info.suppressed))
    if info.explanation:
        out.explanation.CopyFrom(
            pb.Explanation(
                text=info.explanation,
                source=_SOURCES.get(info.explanation_source, pb.EXPLANATION_SOURCE_UNSPECIFIED),
            )
        )


def _contexts(contexts: Iterable[ContextExample]) -> list[pb.ActivatingContext]:
    return [
        pb.ActivatingContext(
            tokens=c.tokens, values=c.values, max_index=c.max_pos, max_value=c.max_value
        )
        for c in contexts
    ]


def _neighbours(neighbours: Iterable[FeatureNeighbour]) -> list[pb.FeatureNeighbour]:
    return [pb.FeatureNeighbour(feature=n.feature, cosine=n.cosine) for n in neighbours]


def _token_effects(effects: Iterable[TokenEffect]) -> list[pb.TokenEffect]:
    return [
        pb.TokenEffect(token=t.token, token_id=t.token_id, logit_effect=t.effect) for t in effects
    ]
