"""A feature index at rest: the on-disk format, loading, and the per-feature query.

A ``FeatureIndex`` holds, for every latent of one SAE, what ``saeserve index`` measured
over a corpus (see ``saeserve.insight.index``): firing counts, max and mean activation,
a log-binned activation histogram, the top activating contexts and the tokens the
feature's decoder direction promotes and suppresses through the unembedding. On disk it
is a folder, compact and free of pickles::

    index.json           metadata (SAE, hook point, corpus size, settings) and format version
    features.safetensors every numeric array below, keyed by field name
    tokens.json          {"ids": [...], "strings": [...]}: each referenced token's text, once
    explanations.jsonl   {"index", "description", "source"} per feature
    postings.safetensors SearchFeatures' word lists (``saeserve.insight.postings``) and
    postings.json        their words; built on load for an index saved without them

Top contexts are stored by reference: each distinct context's token ids once
(``context_tokens``), each (feature, rank) slot as a context row, the max position and
value, and the feature's per-token values as a CSR list of the non-zero positions (most
tokens of a context do not fire a sparse feature). Quantile samples are stored the same
way in the ``sample_*`` arrays, ordered by max value and split into bands on reading
(``quantiles``). An index written before samples existed loads with none.
``feature(f)`` assembles one ``FeatureInfo`` from these arrays.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from saeserve.engine.types import TokenEffect
from saeserve.errors import InvalidArgument, NotFound
from saeserve.insight.postings import Postings, build_postings, read_postings, write_postings

FORMAT_VERSION = 1
INDEX_JSON = "index.json"
ARRAYS_FILE = "features.safetensors"
TOKENS_FILE = "tokens.json"
EXPLANATIONS_FILE = "explanations.jsonl"


@dataclass
class IndexMeta:
    """What was indexed and how; stored as ``index.json``."""

    sae_id: str
    """The SAE's identifier (its config id or folder name)."""
    hook_point: str
    """Hook point the SAE reads, e.g. ``resid_post.1``."""
    model: str
    """The model folder or name the activations came from."""
    d_sae: int
    """Number of features."""
    n_tokens: int
    """Tokens the statistics are over (padding and special tokens excluded)."""
    n_contexts: int
    """Contexts (chunks of at most ``context_length`` tokens) run through the model."""
    context_length: int
    """Tokens per context."""
    n_top_contexts: int
    """Top activating contexts kept per feature."""
    n_logit_tokens: int
    """Promoted and suppressed tokens kept per feature."""
    histogram_bins: int
    """Upper bound on histogram bins per feature."""
    latents_per_token: int
    """Latents read per token: the SAE's k for TopK SAEs, else ``dense_top_k``."""
    quantile_bands: int = 0
    """Bands the quantile samples are split into (0: none kept)."""
    samples_per_band: int = 0
    """Sampled contexts per band, before removing those among the top contexts."""
    sample_seed: int = 0
    """Seed of the sample's keys (``saeserve.insight.kept_contexts.sample_keys``)."""
    logit_lens: str = "final_norm_gain"
    """How W_dec[f] reaches the unembedding (``saeserve.engine.feature_math``):
    ``final_norm_gain`` (through the final norm's centring and gain), ``plain`` (no norm)
    or ``none`` (no logit effects: the SAE's width is not the model's)."""
    format_version: int = FORMAT_VERSION


@dataclass
class ContextExample:
    """One activating context of a feature."""

    token_ids: list[int]
    tokens: list[str]
    values: list[float]
    """The feature's activation at every token (0 where it did not fire)."""
    max_pos: int
    """Index of the token with the highest activation."""
    max_value: float


@dataclass
class QuantileBand:
    """Contexts sampled from one band of a feature's per-context max activations."""

    low: float
    """Smallest max activation among the band's contexts."""
    high: float
    """Largest max activation among them."""
    contexts: list[ContextExample]
    """Strongest first."""


@dataclass
class FeatureInfo:
    """Everything the index knows about one feature (the GetFeature answer)."""

    feature: int
    density: float
    """Fraction of indexed tokens on which the feature is active (> 0)."""
    max_activation: float
    mean_activation: float
    """Mean over the tokens where the feature is active (not over all tokens)."""
    histogram_edges: list[float]
    """``len(histogram_counts) + 1`` increasing edges; bins are [e_i, e_i+1), last closed."""
    histogram_counts: list[int]
    """Active tokens per bin; sums to density * n_tokens."""
    contexts: list[ContextExample]
    """Top activating contexts, strongest first."""
    quantiles: list[QuantileBand]
    """Sampled contexts below the top ones, highest band first (empty bands left out)."""
    promoted: list[TokenEffect]
    """Tokens whose logits rise most per unit activation, largest first."""
    suppressed: list[TokenEffect]
    """Tokens whose logits fall most, most negative first."""
    explanation: str
    explanation_source: str
    """``imported`` (from an explanations file) or ``generated`` (from top tokens)."""


# numeric arrays of a FeatureIndex, in file order; shapes use N = n_top_contexts,
# L = n_logit_tokens, B = histogram_bins, T = context_length
ARRAY_FIELDS = (
    "counts",  # [d_sae] int64: active tokens per feature
    "max_activation",  # [d_sae] float32
    "mean_activation",  # [d_sae] float32, over active tokens
    "hist_edges",  # [d_sae, B + 1] float32, NaN past a feature's last edge
    "hist_counts",  # [d_sae, B] int64, 0 past a feature's last bin
    "hist_n_bins",  # [d_sae] int32: bins in use (0 for a dead feature)
    "top_context",  # [d_sae, N] int32: row of context_tokens, -1 for an empty slot
    "top_max_pos",  # [d_sae, N] int16
    "top_max_value",  # [d_sae, N] float32
    "value_offsets",  # [d_sae * N + 1] int64: CSR row pointers of slot f * N + r
    "value_pos",  # [nnz] int16: positions where the feature fired in that context
    "value",  # [nnz] float32: its activations there
    "sample_context",  # [d_sae, S] int32, S = quantile_bands * samples_per_band; as top_*
    "sample_max_pos",  # [d_sae, S] int16
    "sample_max_value",  # [d_sae, S] float32, largest first
    "sample_value_offsets",  # [d_sae * S + 1] int64
    "sample_value_pos",  # [nnz'] int16
    "sample_value",  # [nnz'] float32
    "context_tokens",  # [n_ctx, T] uint16 or int32 token ids, 0-padded
    "context_lengths",  # [n_ctx] int16
    "promoted_ids",  # [d_sae, L] int32
    "promoted_effects",  # [d_sae, L] float32
    "suppressed_ids",  # [d_sae, L] int32
    "suppressed_effects",  # [d_sae, L] float32
)


_NOT_PER_FEATURE = {
    "value_offsets",
    "value_pos",
    "value",
    "sample_value_offsets",
    "sample_value_pos",
    "sample_value",
    "context_tokens",
    "context_lengths",
}


def empty_samples(d_sae: int) -> dict[str, np.ndarray]:
    """The ``sample_*`` arrays of an index without quantile samples."""
    return {
        "sample_context": np.zeros((d_sae, 0), dtype=np.int32),
        "sample_max_pos": np.zeros((d_sae, 0), dtype=np.int16),
        "sample_max_value": np.zeros((d_sae, 0), dtype=np.float32),
        "sample_value_offsets": np.zeros(1, dtype=np.int64),
        "sample_value_pos": np.zeros(0, dtype=np.int16),
        "sample_value": np.zeros(0, dtype=np.float32),
    }


@dataclass(eq=False)
class FeatureIndex:
    """Per-feature statistics of one SAE over a corpus; see the module docstring."""

    meta: IndexMeta
    counts: np.ndarray
    max_activation: np.ndarray
    mean_activation: np.ndarray
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    hist_n_bins: np.ndarray
    top_context: np.ndarray
    top_max_pos: np.ndarray
    top_max_value: np.ndarray
    value_offsets: np.ndarray
    value_pos: np.ndarray
    value: np.ndarray
    sample_context: np.ndarray
    sample_max_pos: np.ndarray
    sample_max_value: np.ndarray
    sample_value_offsets: np.ndarray
    sample_value_pos: np.ndarray
    sample_value: np.ndarray
    context_tokens: np.ndarray
    context_lengths: np.ndarray
    promoted_ids: np.ndarray
    promoted_effects: np.ndarray
    suppressed_ids: np.ndarray
    suppressed_effects: np.ndarray
    token_strings: dict[int, str]
    """Text of every token id the arrays reference."""
    explanations: list[str]
    explanation_sources: list[str]
    postings: Postings | None = field(default=None, repr=False)
    """SearchFeatures' inverted word lists (``saeserve.insight.postings``): built with
    the index and stored with it; None until built (an index made by hand)."""

    def __post_init__(self) -> None:
        d_sae = self.meta.d_sae
        for name in ARRAY_FIELDS:
            arr = getattr(self, name)
            if name in _NOT_PER_FEATURE:
                continue
            if arr.shape[0] != d_sae:
                raise InvalidArgument(
                    f"index array {name}: first dim {arr.shape[0]} != d_sae {d_sae}"
                )
        if len(self.explanations) != d_sae or len(self.explanation_sources) != d_sae:
            raise InvalidArgument(f"index explanations: need one per feature (d_sae {d_sae})")

    @property
    def d_sae(self) -> int:
        return self.meta.d_sae

    @property
    def density(self) -> np.ndarray:
        """[d_sae] float64: fraction of indexed tokens on which each feature fired."""
        return self.counts / max(self.meta.n_tokens, 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureIndex):
            return NotImplemented
        if self.meta != other.meta or self.token_strings != other.token_strings:
            return False
        if self.explanations != other.explanations:
            return False
        if self.explanation_sources != other.explanation_sources:
            return False
        return all(
            getattr(self, n).dtype == getattr(other, n).dtype
            and np.array_equal(getattr(self, n), getattr(other, n), equal_nan=True)
            for n in ARRAY_FIELDS
        )

    __hash__ = object.__hash__

    # --- queries -------------------------------------------------------------------
    def check_feature(self, feature: int) -> None:
        """Raise NotFound unless 0 <= feature < d_sae."""
        if not 0 <= feature < self.d_sae:
            raise NotFound(f"feature: {feature} is outside [0, d_sae {self.d_sae})")

    def token_text(self, token_id: int) -> str:
        return self.token_strings.get(int(token_id), f"<{int(token_id)}>")

    def feature(self, feature: int) -> FeatureInfo:
        """All stored information about one feature."""
        self.check_feature(feature)
        f = int(feature)
        n_bins = int(self.hist_n_bins[f])
        return FeatureInfo(
            feature=f,
            density=float(self.density[f]),
            max_activation=float(self.max_activation[f]),
            mean_activation=float(self.mean_activation[f]),
            histogram_edges=[float(e) for e in self.hist_edges[f, : n_bins + 1]] if n_bins else [],
            histogram_counts=[int(c) for c in self.hist_counts[f, :n_bins]],
            contexts=self.contexts(f),
            quantiles=self.quantiles(f),
            promoted=self._effects(self.promoted_ids[f], self.promoted_effects[f]),
            suppressed=self._effects(self.suppressed_ids[f], self.suppressed_effects[f]),
            explanation=self.explanations[f],
            explanation_source=self.explanation_sources[f],
        )

    def contexts(self, feature: int) -> list[ContextExample]:
        """The feature's top activating contexts, strongest first."""
        self.check_feature(feature)
        return self._slots(
            feature,
            self.top_context,
            self.top_max_pos,
            self.top_max_value,
            (self.value_offsets, self.value_pos, self.value),
        )

    def quantiles(self, feature: int) -> list[QuantileBand]:
        """The feature's sampled contexts, split by rank into at most ``quantile_bands``
        bands of near-equal size (``numpy.array_split``), highest band first."""
        self.check_feature(feature)
        sampled = self._slots(
            feature,
            self.sample_context,
            self.sample_max_pos,
            self.sample_max_value,
            (self.sample_value_offsets, self.sample_value_pos, self.sample_value),
        )
        if not sampled:
            return []
        bands = np.array_split(np.arange(len(sampled)), self.meta.quantile_bands)
        return [
            QuantileBand(
                low=sampled[int(band[-1])].max_value,
                high=sampled[int(band[0])].max_value,
                contexts=[sampled[int(i)] for i in band],
            )
            for band in bands
            if band.size
        ]

    def _slots(
        self,
        feature: int,
        context: np.ndarray,
        max_pos: np.ndarray,
        max_value: np.ndarray,
        csr: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> list[ContextExample]:
        """The filled slots of one feature in one family of kept contexts."""
        offsets, positions, activations = csr
        n = context.shape[1]
        out: list[ContextExample] = []
        for r in range(n):
            row = int(context[feature, r])
            if row < 0:
                break
            length = int(self.context_lengths[row])
            ids = [int(t) for t in self.context_tokens[row, :length]]
            values = np.zeros(length, dtype=np.float32)
            lo, hi = offsets[feature * n + r], offsets[feature * n + r + 1]
            values[positions[lo:hi].astype(np.int64)] = activations[lo:hi]
            out.append(
                ContextExample(
                    token_ids=ids,
                    tokens=[self.token_text(t) for t in ids],
                    values=[float(v) for v in values],
                    max_pos=int(max_pos[feature, r]),
                    max_value=float(max_value[feature, r]),
                )
            )
        return out

    def top_tokens(self, feature: int) -> list[str]:
        """Texts of the max-activating token of each top context, strongest first."""
        rows = self.top_context[feature]
        pos = self.top_max_pos[feature]
        return [
            self.token_text(self.context_tokens[row, p])
            for row, p in zip(rows.tolist(), pos.tolist(), strict=True)
            if row >= 0
        ]

    def _effects(self, ids: np.ndarray, effects: np.ndarray) -> list[TokenEffect]:
        return [
            TokenEffect(self.token_text(i), float(e), int(i))
            for i, e in zip(ids.tolist(), effects.tolist(), strict=True)
        ]

    # --- persistence ---------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the index into ``folder`` (created if needed); returns the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {n: np.ascontiguousarray(getattr(self, n)) for n in ARRAY_FIELDS}, out / ARRAYS_FILE
        )
        ids = sorted(self.token_strings)
        tokens = {"ids": ids, "strings": [self.token_strings[i] for i in ids]}
        (out / TOKENS_FILE).write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
        with (out / EXPLANATIONS_FILE).open("w", encoding="utf-8") as fh:
            for f, (text, source) in enumerate(
                zip(self.explanations, self.explanation_sources, strict=True)
            ):
                record = {"index": f, "description": text, "source": source}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.postings is None:
            self.postings = build_postings(self)
        write_postings(self.postings, out)
        # index.json last: its presence marks a complete index
        (out / INDEX_JSON).write_text(
            json.dumps(asdict(self.meta), indent=2) + "\n", encoding="utf-8"
        )
        return out

    @classmethod
    def load(cls, folder: str | Path) -> FeatureIndex:
        """Read an index written by ``save``."""
        src = Path(folder)
        if not (src / INDEX_JSON).is_file():
            raise NotFound(f"index: no {INDEX_JSON} in {src}")
        raw = json.loads((src / INDEX_JSON).read_text(encoding="utf-8"))
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise InvalidArgument(
                f"index {src}: format_version {version} is not the supported {FORMAT_VERSION}"
            )
        known = {f.name for f in fields(IndexMeta)}
        meta = IndexMeta(**{k: v for k, v in raw.items() if k in known})
        arrays = load_file(src / ARRAYS_FILE)
        if "sample_context" not in arrays:  # written before quantile samples existed
            arrays.update(empty_samples(meta.d_sae))
        missing = [n for n in ARRAY_FIELDS if n not in arrays]
        if missing:
            raise InvalidArgument(f"index {src}: {ARRAYS_FILE} lacks {', '.join(missing)}")
        tokens = json.loads((src / TOKENS_FILE).read_text(encoding="utf-8"))
        token_strings = dict(zip(tokens["ids"], tokens["strings"], strict=True))
        explanations = [""] * meta.d_sae
        sources = [""] * meta.d_sae
        with (src / EXPLANATIONS_FILE).open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    explanations[rec["index"]] = rec["description"]
                    sources[rec["index"]] = rec["source"]
        index = cls(
            meta=meta,
            token_strings=token_strings,
            explanations=explanations,
            explanation_sources=sources,
            postings=read_postings(src),
            **{n: arrays[n] for n in ARRAY_FIELDS},
        )
        if index.postings is None:  # saved before postings were stored
            index.postings = build_postings(index)
        return index
