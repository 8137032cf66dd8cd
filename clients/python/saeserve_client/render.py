"""Terminal rendering for the client CLI: each result type as readable lines, or as JSON.

``Style`` decides whether ANSI colour is used (a tty, unless ``NO_COLOR`` or
``--color never``); without it the views are plain text, and activating tokens in
feature contexts are marked ``[[like this]]``. ``jsonable`` turns any result
(dataclasses holding numpy arrays) into JSON-ready lists and dicts for ``--json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from saeserve_client.results import (
    ActivatingContext,
    Attribution,
    Feature,
    FeatureInputAttribution,
    FeatureMatch,
    Generation,
    Inspection,
    ModelInfo,
    SaeContrast,
    SaeDecomposition,
    TextDecomposition,
    TokenLogit,
    Tokens,
)

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
# Heat levels for activations, weakest to strongest: plain, yellow, bold red on a tty.
HEAT = ("", "\x1b[33m", "\x1b[1;31m")
MARK = "\x1b[1;30;43m"  # an activating token: black on yellow
SPARK = "▁▂▃▄▅▆▇█"
TOKEN_WIDTH = 16


@dataclasses.dataclass(frozen=True)
class Style:
    """Colour on or off; every method is the identity when off."""

    color: bool

    @classmethod
    def for_stream(cls, stream: TextIO, mode: str = "auto") -> Style:
        if mode != "auto":
            return cls(mode == "always")
        isatty = getattr(stream, "isatty", lambda: False)()
        return cls(
            bool(isatty) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )

    def _wrap(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color and code else text

    def bold(self, text: str) -> str:
        return self._wrap(BOLD, text)

    def dim(self, text: str) -> str:
        return self._wrap(DIM, text)

    def heat(self, text: str, fraction: float) -> str:
        """Colour ``text`` by ``fraction`` of the strongest value in view (0..1)."""
        level = 2 if fraction >= 2 / 3 else 1 if fraction >= 1 / 3 else 0
        return self._wrap(HEAT[level], text)

    def mark(self, token: str) -> str:
        """Highlight an activating token, keeping its leading whitespace outside the mark."""
        body = token.lstrip()
        space = token[: len(token) - len(body)]
        if not body:
            return token
        return space + (self._wrap(MARK, body) if self.color else f"[[{body}]]")


def quoted(token: str, width: int = TOKEN_WIDTH) -> str:
    """A token as a JSON string literal (whitespace visible), shortened to ``width``."""
    text = json.dumps(token, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 2] + "…" + '"'


def flat(token: str) -> str:
    """A context token on one line: newlines shown as ⏎, tabs as →."""
    return token.replace("\r\n", "⏎").replace("\n", "⏎").replace("\t", "→")


def jsonable(value: Any) -> Any:
    """Results -> plain JSON values (numpy arrays become nested lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        # shortest decimals that read back as the same float32: 2.1, not 2.0999999046325684
        return np.array([float(str(v)) for v in value.ravel()]).reshape(value.shape).tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# views


def models_view(models: Sequence[ModelInfo], style: Style) -> list[str]:
    lines: list[str] = []
    for n, model in enumerate(models):
        default = "  (default)" if n == 0 else ""
        chat = "yes" if model.has_chat_template else "no"
        lines.append(
            f"{style.bold(model.name)}{default}  {model.family} · {model.n_layers} layers · "
            f"d_model {model.d_model} · vocab {model.vocab_size} · "
            f"{model.max_positions} positions · {model.dtype} · chat template: {chat}"
        )
        if not model.saes:
            lines.append("  no SAEs")
            continue
        rows = [("sae", "hook point", "arch", "d_sae", "k", "dtype", "weights", "index")] + [
            (
                s.id,
                s.hook_point,
                s.architecture,
                str(s.d_sae),
                str(s.k or "-"),
                s.dtype or "-",
                f"{s.weight_bytes / 2**20:.1f} MiB" if s.weight_bytes else "-",
                "yes" if s.has_feature_index else "no",
            )
            for s in model.saes
        ]
        lines.extend("  " + line for line in _table(rows, right={3, 4, 6}, style=style))
    return lines


def tokens_view(tokens: Tokens, style: Style) -> list[str]:
    rows = [("#", "id", "bytes", "token")] + [
        (
            str(t),
            str(int(tokens.ids[t])),
            f"{tokens.offsets[t, 0]}-{tokens.offsets[t, 1]}",
            quoted(tokens.strings[t], 40),
        )
        for t in range(len(tokens))
    ]
    return _table(rows, right={0, 1}, style=style)


def decomposition_view(item: TextDecomposition, style: Style) -> list[str]:
    """Per SAE: one line per token with its top features (strongest first) as id=value."""
    lines = [f"{style.bold('text')} {quoted(item.text, 60)}  ({len(item)} tokens)"]
    for part in item.saes.values():
        lines.extend(_sae_view(item, part, style))
    return lines


def _sae_view(item: TextDecomposition, part: SaeDecomposition, style: Style) -> list[str]:
    header = f"sae {style.bold(part.sae)} @ {part.hook_point}"
    if part.explained_variance is not None:
        header += f" · explained variance {part.explained_variance:.3f}"
    lines = ["", header]
    peak = float(part.top_values.max()) if part.top_values.size else 0.0
    width = max([len(quoted(t)) for t in item.tokens] + [5])
    has_mse = part.token_mse is not None and len(part.token_mse) == len(item)
    head = (
        f"{'#':>4}  {'token':<{width}}"
        + ("    mse" if has_mse else "")
        + "  top features (id=value)"
    )
    if len(part.feature_ids):
        head += "  | requested"
    lines.append(style.dim(head))
    for t, token in enumerate(item.tokens):
        cells = []
        for rank, (feature, value) in enumerate(part.top_features(t)):
            cell = f"{feature}={value:.2f}"
            cell = style.heat(cell, value / peak if peak > 0 else 0.0)
            cells.append(style.bold(cell) if rank == 0 else cell)
        row = f"{t:>4}  {quoted(token):<{width}}"
        if has_mse and part.token_mse is not None:
            row += f"  {part.token_mse[t]:5.3f}"
        row += "  " + ("  ".join(cells) if cells else style.dim("-"))
        if len(part.feature_ids):
            dense = "  ".join(
                f"{int(f)}={v:.2f}" for f, v in zip(part.feature_ids, part.dense[t], strict=True)
            )
            row += "  | " + dense
        lines.append(row)
    return lines


def feature_view(
    feature: Feature, style: Style, contexts: int = 10, effects: int = 10
) -> list[str]:
    title = f"{style.bold(f'{feature.sae} / {feature.feature}')}"
    if feature.explanation is not None:
        title += f"  {feature.explanation.text!r} ({feature.explanation.source})"
    lines = [title]
    if feature.has_statistics:
        lines.append(
            f"density {feature.density:.4%} · max activation {feature.max_activation:.3f} · "
            f"mean {feature.mean_activation:.3f} · {feature.tokens_indexed:,} tokens indexed"
        )
        if feature.histogram is not None and feature.histogram.counts.size:
            edges = feature.histogram.bin_edges
            lines.append(
                f"activations {sparkline(feature.histogram.counts)}  "
                f"{edges[0]:.2f} … {edges[-1]:.2f}"
            )
    else:
        lines.append(style.dim("no feature index for this SAE: logit effects only"))
    if feature.top_contexts:
        lines += ["", style.bold("top contexts")]
        lines += [_context_line(ctx, style) for ctx in feature.top_contexts[:contexts]]
    for band in feature.quantiles:
        title = f"sampled, max activation {band.min_activation:.3f} … {band.max_activation:.3f}"
        lines += ["", style.bold(title)]
        lines += [_context_line(ctx, style) for ctx in band.contexts[:contexts]]
    if feature.top_promoted or feature.top_suppressed:
        lines.append("")
    for name, items in (("promotes", feature.top_promoted), ("suppresses", feature.top_suppressed)):
        if items:
            shown = "  ".join(f"{quoted(e.token)} {e.logit_effect:+.3f}" for e in items[:effects])
            lines.append(f"{style.bold(name):<10}  {shown}")
    for name, neighbours in (
        ("decoder neighbours", feature.decoder_neighbours),
        ("encoder neighbours", feature.encoder_neighbours),
    ):
        if neighbours:
            shown = "  ".join(f"{n.feature} {n.cosine:.3f}" for n in neighbours)
            lines.append(f"{style.bold(name)}  {shown}")
    return lines


def _context_line(ctx: ActivatingContext, style: Style) -> str:
    text = "".join(
        style.mark(flat(tok)) if value > 0 else flat(tok)
        for tok, value in zip(ctx.tokens, ctx.values.tolist(), strict=True)
    )
    return f"  {ctx.max_value:8.3f}  {text}"


def matches_view(query: str, matches: Sequence[FeatureMatch], style: Style) -> list[str]:
    if not matches:
        return [f"no features match {query!r}"]
    rows = [("score", "feature", "explanation", "top tokens")] + [
        (
            f"{m.score:.3f}",
            f"{m.sae}/{m.feature}",
            m.explanation.text if m.explanation else "-",
            " ".join(quoted(t) for t in m.top_tokens[:6]),
        )
        for m in matches
    ]
    return _table(rows, right={0}, style=style)


def inspection_view(result: Inspection, style: Style) -> list[str]:
    """Per SAE: its top features with count, max (at which token), means and positions."""
    strings = result.tokens.strings
    lines = [f"{len(strings)} tokens"]
    for part in result.saes.values():
        lines += ["", f"sae {style.bold(part.sae)} @ {part.hook_point} · "
                  f"{part.active_features} features active"]  # fmt: skip
        rows = [("feature", "count", "max", "at", "mean", "mean active", "positions")]
        for f in part.features:
            shown = " ".join(str(p) for p in f.positions.tolist())
            more = f" … ({f.count})" if f.count > len(f.positions) else ""
            rows.append(
                (
                    str(f.feature),
                    str(f.count),
                    f"{f.max_activation:.3f}",
                    f"{f.max_position} {quoted(strings[f.max_position])}",
                    f"{f.mean_over_tokens:.4f}",
                    f"{f.mean_over_active:.3f}",
                    shown + more,
                )
            )
        lines += _table(rows, right={0, 1, 2, 4, 5}, style=style)
    return lines


def contrast_view(result: Mapping[str, SaeContrast], style: Style) -> list[str]:
    """Per SAE: the features more active on set A, then those more active on set B."""
    lines: list[str] = []
    for part in result.values():
        lines += [
            *([""] if lines else []),
            f"sae {style.bold(part.sae)} @ {part.hook_point} · samples A {part.samples_a}, "
            f"B {part.samples_b} · {part.active_features} features active",
        ]
        for title, rows in (("more on A", part.more_in_a), ("more on B", part.more_in_b)):
            table = [("feature", "mean A", "mean B", "diff", "AUROC", "d", "active A", "active B")]
            table += [
                (
                    str(r.feature),
                    f"{r.mean_a:.4f}",
                    f"{r.mean_b:.4f}",
                    f"{r.mean_diff:+.4f}",
                    f"{r.auroc:.3f}",
                    "-" if r.cohens_d is None else f"{r.cohens_d:+.2f}",
                    f"{r.active_fraction_a:.1%}",
                    f"{r.active_fraction_b:.1%}",
                )
                for r in rows
            ]
            lines += ["", style.bold(title)]
            lines += _table(table, right=set(range(8)), style=style) if rows else ["  none"]
    return lines


def generation_footer(generation: Generation, style: Style) -> str:
    usage = generation.usage
    tokens = (
        f" · {usage.prompt_tokens} prompt + {usage.generated_tokens} generated tokens"
        if usage
        else ""
    )
    reason = generation.finish_reason or "unfinished"
    if generation.stop_condition is not None:
        reason += f" {generation.stop_condition}"
    return style.dim(f"[{reason}{tokens}]")


def sparkline(counts: np.ndarray) -> str:
    top = float(counts.max()) if counts.size else 0.0
    if top <= 0:
        return SPARK[0] * len(counts)
    return "".join(
        SPARK[min(int(c / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for c in counts
    )


def _table(rows: Sequence[Sequence[str]], right: set[int], style: Style) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        line = "  ".join(cells).rstrip()
        out.append(style.dim(line) if n == 0 else line)
    return out


def attribution_view(item: Attribution, style: Style) -> list[str]:
    """The explained token, then per SAE how the metric splits and its top features."""

    def token(t: TokenLogit) -> str:
        return f"{quoted(t.token)} (id {t.token_id}, logit {t.logit:.3f}, p {t.probability:.2%})"

    head = f"next token {token(item.target)}"
    if item.contrast is not None:
        head += f" vs {token(item.contrast)}: logit difference {item.metric:+.3f}"
    lines = [style.bold(head)]
    for s in item.saes:
        lines += ["", style.bold(f"{s.sae} @ {s.hook_point}") + f" · {s.active_features} active"]
        measures = [("total", s.total, s.top_total_positive, s.top_total_negative)]
        if s.has_direct_path:
            measures.insert(0, ("direct", s.direct, s.top_direct_positive, s.top_direct_negative))
        for name, terms, up, down in measures:
            whole = "direct path" if name == "direct" else "gradient x input"
            lines.append(
                style.dim(
                    f"  {name}: features {terms.features:+.3f} + error {terms.error:+.3f}"
                    f" + bias {terms.bias:+.3f} = {terms.whole:+.3f} ({whole})"
                )
            )
            for sign, effects in (("+", up), ("-", down)):
                if effects:
                    shown = "  ".join(
                        f"{e.feature} {e.direct_effect if name == 'direct' else e.total_effect:+.3f}"
                        for e in effects
                    )
                    lines.append(f"  {name} {sign}  {shown}")
    return lines


def feature_input_view(item: FeatureInputAttribution, style: Style) -> list[str]:
    """The prompt's tokens up to the position, each with its gradient x input."""
    title = (
        f"position {item.position} {quoted(item.tokens.strings[item.position])}: "
        f"pre-activation {item.pre_activation:.3f}, activation {item.activation:.3f}"
    )
    rows = [("pos", "token", "gradient x input")] + [
        (str(p), quoted(item.tokens.strings[p]), f"{v:+.4f}")
        for p, v in enumerate(item.attributions.tolist())
    ]
    return [style.bold(title), *_table(rows, right={0, 2}, style=style)]
