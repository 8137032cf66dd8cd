"""saeserve_client: Python client for a saeserve server (sync, asyncio, and the CLI).

Needs only grpcio, protobuf and numpy; it never imports torch or ray. Start with
``SaeserveClient`` (or ``AsyncSaeserveClient``), whose methods return the dataclasses
below; every failed call raises ``SaeserveError``; ``Steer`` builds interventions for
``generate``; ``ClientOptions`` and ``RetryPolicy`` configure the connection.

    from saeserve_client import SaeserveClient, Steer
    with SaeserveClient("localhost:9000") as client:
        print(client.list_models())
"""

from saeserve_client.aio import AsyncGenerateStream, AsyncSaeserveClient
from saeserve_client.client import GenerateStream, SaeserveClient
from saeserve_client.errors import SaeserveError
from saeserve_client.options import DEFAULT_TARGET, NO_RETRY, ClientOptions, RetryPolicy
from saeserve_client.results import (
    ActivatingContext,
    Attribution,
    AttributionTerms,
    Condition,
    Explanation,
    Feature,
    FeatureActivity,
    FeatureAttribution,
    FeatureContrast,
    FeatureInputAttribution,
    FeatureMatch,
    FeatureNeighbour,
    GenerateChunk,
    Generation,
    Histogram,
    Inspection,
    ModelInfo,
    PositionAttribution,
    QuantileSamples,
    SaeActivity,
    SaeAttribution,
    SaeContrast,
    SaeDecomposition,
    SaeInfo,
    Steer,
    TextDecomposition,
    TokenEffect,
    TokenLogit,
    TokenLogprob,
    Tokens,
    Usage,
    collect,
)

__all__ = [
    "DEFAULT_TARGET",
    "NO_RETRY",
    "ActivatingContext",
    "AsyncGenerateStream",
    "AsyncSaeserveClient",
    "Attribution",
    "AttributionTerms",
    "ClientOptions",
    "Condition",
    "Explanation",
    "Feature",
    "FeatureActivity",
    "FeatureAttribution",
    "FeatureContrast",
    "FeatureInputAttribution",
    "FeatureMatch",
    "FeatureNeighbour",
    "GenerateChunk",
    "GenerateStream",
    "Generation",
    "Histogram",
    "Inspection",
    "ModelInfo",
    "PositionAttribution",
    "QuantileSamples",
    "RetryPolicy",
    "SaeActivity",
    "SaeAttribution",
    "SaeContrast",
    "SaeDecomposition",
    "SaeInfo",
    "SaeserveClient",
    "SaeserveError",
    "Steer",
    "TextDecomposition",
    "TokenEffect",
    "TokenLogit",
    "TokenLogprob",
    "Tokens",
    "Usage",
    "collect",
]
