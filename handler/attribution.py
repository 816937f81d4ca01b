"""Layer Integrated Gradients on the embedding layer, against an all-padding reference.

Two engines compute the same quantity:

* ``captum``: Captum's ``LayerIntegratedGradients`` -- the reference implementation, and the
  engine for any model the shortcut below does not apply to.
* ``fast``: structure-aware and exact, for :class:`~handler.model.SentimentCNN`.

Why the fast engine is exact. Along the path e(a) = e0 + a * (e - e0) the conv pre-activations
are P0 + a * A with A = conv(e - e0) (no bias). The reference is one token repeated, so every
window of e0 is the same and P0 = p0 is constant over time. Hence for a > 0 the max-pool winner
of channel f is argmax_t A[f, t] -- the *same* window at every step -- and the only thing that
changes along the path is whether ReLU(p0 + a * M) is on, M = max_t A[f, t]. The integral of the
gradient therefore collapses, per channel, to a scalar weight on one window:

    G[f, t*] = w_fc[f] * sum_k c_k * 1{p0 + a_k * M > 0}          (quadrature with nodes a_k, c_k)
    G[f, t*] = w_fc[f] * |{a in [0, 1] : p0 + a * M > 0}|         (``method="exact"``: the integral)

and token t*+j of the winning window gets G[f, t*] * (e - e0) . W[f, :, j]. No step's activations
are ever materialised; the cost is one pass over the windows whatever the steps. Both A and the
backward products come from per-token tables (``handler.taps.TapEngine``), so no convolution runs.

Ties. When a channel's maximum is reached by several windows (copies of a repeated n-gram, which
the tables make bit-identical), the rule ``IGSettings.ties`` decides who gets G[f, t*]:

* ``split`` (default): shared evenly between the copies, as ``amax``'s backward does. Identical
  windows get identical credit, whatever their order.
* ``first``: all of it to the earliest copy, as ``F.max_pool1d``'s backward does -- the tutorial's
  model, so this reproduces the tutorial's numbers.

Totals (and so delta) are the same under both rules, except at a node at alpha = 0 (riemann_left,
riemann_trapezoid), where every window ties and the rule picks whose tokens count; otherwise only the
per-token split differs. The Captum engine honours the rule too: ``split`` runs Captum on the
model's own (``amax``) forward, ``first`` on the tutorial's ``F.max_pool1d`` forward of the same
layers (``model.TutorialCNN``). It sees a tie only where its convolution rounds the copies alike: a
GEMM may sum a window in another order by its position (oneMKL on an AMD EPYC does, in the last
block of windows), and then one copy wins by a few ulps whatever the rule. The fast engine's
tables make copies bit-identical on any CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients, TokenReferenceBase
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

from handler.model import SentimentCNN, TutorialCNN, window_mask
from handler.taps import TapEngine, TokenTaps, engine_for, length_groups

EXACT = "exact"
METHODS = tuple(SUPPORTED_METHODS) + (EXACT,)
ENGINES = ("fast", "captum")
# Max-pool ties (identical winning windows): share the gradient evenly, or give it to the first.
TIES = ("split", "first")


@dataclass(frozen=True)
class IGSettings:
    engine: str = "fast"
    method: str = "gausslegendre"
    n_steps: int = 50
    adaptive: bool = False  # raise steps (doubling) per review until the relative delta <= rtol
    rtol: float = 1e-3
    max_steps: int = 1024
    # Rows go in length groups (at most 2x apart), cut so that one chunk's activations stay
    # within this many floats.
    chunk_elements: int = 4_000_000
    ties: str = "split"  # see TIES; "first" is what F.max_pool1d's backward does

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if self.method == EXACT and self.engine != "fast":
            raise ValueError("method 'exact' needs the fast engine")
        if self.ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}")
        if not 2 <= self.n_steps <= self.max_steps:
            raise ValueError(f"n_steps must be in [2, {self.max_steps}]")


@dataclass
class Attribution:
    attributions: torch.Tensor  # [B, T] summed over the embedding dimension, not normalised
    delta: torch.Tensor  # [B] sum(attributions) - (F(input) - F(reference)), Captum's definition
    logits: torch.Tensor  # [B] F(input)
    ref_logits: torch.Tensor  # [B] F(reference)
    n_steps: torch.Tensor  # [B] steps used; 0 for the exact integral
    method: str
    engine: str
    ties: str  # the tie rule applied (see TIES); "model" for a model the rule cannot reach (its own pool)

    def relative_delta(self) -> torch.Tensor:
        """|delta| / |F(input) - F(reference)|, the convergence measure used for adaptivity."""
        return self.delta.abs() / (self.logits - self.ref_logits).abs().clamp_min(1e-12)


def reference_ids(ids: torch.Tensor, pad_idx: int) -> torch.Tensor:
    """[B, T] all-padding reference, as in the tutorial (``TokenReferenceBase``)."""
    ref = TokenReferenceBase(reference_token_idx=pad_idx).generate_reference(ids.shape[1], device=ids.device)
    return ref.unsqueeze(0).expand_as(ids)


@lru_cache(maxsize=64)
def quadrature(method: str, n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(alphas, weights) of Captum's rule, cached: Captum recomputes them at every call."""
    step_sizes, alphas = approximation_parameters(method)
    return tuple(alphas(n_steps)), tuple(step_sizes(n_steps))


def step_counts(settings: IGSettings) -> list[int]:
    """The step counts a review may be explained with: n_steps, then (adaptive) doubling up to max_steps."""
    counts = [settings.n_steps]
    while settings.adaptive and settings.method != EXACT and counts[-1] < settings.max_steps:
        counts.append(min(2 * counts[-1], settings.max_steps))
    return counts


def prepare_quadrature(settings: IGSettings) -> None:
    """Compute the rules these settings may need now, not in a request (Gauss-Legendre at 1,024
    nodes takes ~0.3 s the first time)."""
    if settings.method != EXACT:
        for n in step_counts(settings):
            quadrature(settings.method, n)


def fast_engine_applies(model: torch.nn.Module) -> bool:
    return isinstance(model, SentimentCNN) and model.config.output_dim == 1


def layer_ig(
    model: torch.nn.Module,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    settings: IGSettings,
    taps: TapEngine | None = None,
) -> Attribution:
    """Attribute each row of ``ids`` [B, T]; falls back to Captum where the fast engine does not apply.

    ``taps``: the model's tap tables, built once by the caller (a worker builds them when it loads);
    without them the fast engine uses the engine attached to the model, attaching one on first use.
    """
    settings = _applicable(model, settings)
    runner = engine_for(model, taps) if settings.engine == "fast" else model  # fast: runs on the tap tables
    out = _run(runner, ids, lengths, settings, settings.n_steps)
    if settings.adaptive and settings.method != EXACT and settings.engine != "fast":  # fast: adaptive inside
        _redo_unconverged(model, ids, lengths, settings, out)
    return out


def _applicable(model: torch.nn.Module, settings: IGSettings) -> IGSettings:
    """``settings``, or where the fast engine does not apply to ``model``, the same for Captum (whose
    nearest rule to the exact integral is Gauss-Legendre)."""
    if settings.engine != "fast" or fast_engine_applies(model):
        return settings
    return replace(settings, engine="captum", method="gausslegendre" if settings.method == EXACT else settings.method)


def _redo_unconverged(
    model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor, settings: IGSettings, out: Attribution
) -> None:
    """Captum's adaptive steps: rerun the rows whose relative delta exceeds rtol with doubled steps
    (up to max_steps), each time on those rows alone, and write their answers into ``out``."""
    steps = settings.n_steps
    todo = _unconverged(out, settings.rtol)
    while todo.any() and steps < settings.max_steps:
        steps = min(2 * steps, settings.max_steps)
        rows = todo.nonzero().squeeze(1)
        width = int(lengths[rows].max())
        redo = _run(model, ids[rows, :width], lengths[rows], settings, steps)
        out.attributions[rows] = 0.0
        out.attributions[rows, :width] = redo.attributions
        for name in ("delta", "logits", "ref_logits", "n_steps"):
            getattr(out, name)[rows] = getattr(redo, name)
        todo = _unconverged(out, settings.rtol)


def _unconverged(out: Attribution, rtol: float) -> torch.Tensor:
    return (out.relative_delta() > rtol) & (out.delta.abs() > 1e-6)


def chunk_plan(model, lengths: torch.Tensor, settings: IGSettings) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """(rows sorted by length [B], chunks (start, end, width) of that order): length groups at most
    2x apart, each chunk padded only to its own longest row and within ``chunk_elements`` floats.
    ``model``: the network, or the TapEngine the fast engine runs on."""
    order = torch.argsort(lengths)
    sorted_lengths = lengths[order].tolist()  # one device sync for all the chunks' widths
    cost = partial(_row_cost, model.model if isinstance(model, TapEngine) else model)
    chunks = length_groups(sorted_lengths, cost, settings.chunk_elements)
    return order, [(start, end, sorted_lengths[end - 1]) for start, end in chunks]


def _run(model, ids, lengths, settings: IGSettings, n_steps: int) -> Attribution:
    """Each chunk of the plan in one engine call (``model``: the TapEngine for the fast engine, the
    network for Captum); rows are independent, so answers do not depend on the plan."""
    b, t = ids.shape
    fn = _fast if settings.engine == "fast" else _captum
    order, chunks = chunk_plan(model, lengths, settings)
    if settings.engine == "fast" and not _has_zero_node(settings, n_steps):
        return _fast_batch(model, ids, lengths, order, chunks, settings, n_steps)
    parts = []
    for start, end, width in chunks:
        rows = order[start:end]
        parts.append((rows, fn(model, ids[rows, :width], lengths[rows], settings, n_steps)))
    dtype = parts[0][1].attributions.dtype
    out = Attribution(
        torch.zeros(b, t, dtype=dtype, device=ids.device),
        *(torch.empty(b, dtype=dtype, device=ids.device) for _ in range(3)),
        n_steps=torch.empty(b, dtype=torch.long, device=ids.device),
        method=settings.method,
        engine=settings.engine,
        ties=parts[0][1].ties,
    )
    for rows, res in parts:
        width = res.attributions.shape[1]
        out.attributions[rows, :width] = res.attributions
        out.delta[rows], out.logits[rows], out.ref_logits[rows] = res.delta, res.logits, res.ref_logits
        out.n_steps[rows] = res.n_steps
    return out


def _row_cost(model, tokens: int) -> int:
    """Floats of activations one row of ``tokens`` needs at once in an engine call.

    Fast engine: every filter size's pre-activations and table rows are kept between its two
    passes (F floats + fs int64 per token each), plus one winner mask at a time.
    """
    if isinstance(model, SentimentCNN):
        c = model.config
        return tokens * (len(c.filter_sizes) * (c.n_filters + 2 * max(c.filter_sizes)) + c.n_filters)
    return tokens * 1024


def _captum(model, ids, lengths, settings: IGSettings, n_steps: int) -> Attribution:
    """Captum's LayerIntegratedGradients; runs with autograd on even inside TorchServe's inference_mode.

    On a SentimentCNN the forward follows the tie rule: the model's own ``amax`` forward for
    ``split``, the tutorial's ``F.max_pool1d`` forward of the same layers for ``first``. Any other
    model runs as it is, with its own pooling (reported as ties "model")."""
    ties = "model"
    forward = model
    if isinstance(model, SentimentCNN):
        ties = settings.ties
        forward = TutorialCNN(model, "max_pool1d") if ties == "first" else model
    with torch.inference_mode(False), torch.enable_grad():
        ids, lengths = ids.clone(), lengths.clone()  # inference tensors cannot be saved for backward
        ref = reference_ids(ids, model.embedding.padding_idx)
        lig = LayerIntegratedGradients(forward, model.embedding)
        attr, delta = lig.attribute(
            ids,
            ref,
            additional_forward_args=(lengths,),
            n_steps=n_steps,
            method=settings.method,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            logits, ref_logits = forward(ids, lengths), forward(ref, lengths)
    return Attribution(
        attr.sum(dim=2).detach(),
        delta.detach(),
        logits,
        ref_logits,
        torch.full_like(lengths, n_steps),
        settings.method,
        "captum",
        ties,
    )


@torch.inference_mode()
def _fast(taps: TapEngine, ids, lengths, settings: IGSettings, n_steps: int) -> Attribution:
    """Two passes: the windows' pre-activations and maxima of every filter size, then the backward
    scatter with each review's step count -- chosen in between, by ``_choose_steps``, from [B, F]
    quantities alone, so adaptive steps cost no extra pass over the windows.

    All filter sizes go through each step together (one ``embedding_bag``, one ``max``, one
    scatter: ``TapEngine.windows``), in the order a pass per filter size would take, so the sums
    and their bits are the same; a call costs a third of the small kernels it did."""
    taps.check()
    model = taps.model
    b, t = ids.shape
    nf = taps.n_filters
    w_fc = model.fc.weight[0].split(nf)  # len(fs) x [F]
    logits = model.fc.bias[0]
    # [B, T', S] table rows, [B, T', C * F] A = conv(e - e0); T' a multiple of _GROUP (for _maxima)
    rows, a = taps.windows(taps.token_rows(ids, lengths), _GROUP)
    m, first, tied = _maxima(a)  # [B, C * F] each: the max, its first window, whether another reaches it
    p0 = torch.cat([conv.p0 for conv in taps.convs])  # [C * F]
    on = F.relu(p0 + m)  # [B, C * F]
    convs = []
    for k, (conv, w_out) in enumerate(zip(taps.convs, w_fc)):
        n = t - conv.fs + 1  # this filter size's own windows
        a_k, m_k = a[:, :n, k * nf : (k + 1) * nf], m[:, k * nf : (k + 1) * nf]
        # F at alpha = 1 from the same pre-activations: the model's own max-pool and fc.
        logits = logits + on[:, k * nf : (k + 1) * nf] @ w_out  # [B]
        shares = None  # only rules with a node at alpha = 0 need them (riemann_left, riemann_trapezoid)
        if _has_zero_node(settings, n_steps):
            shares = _zero_shares(window_mask(lengths, conv.fs, n), settings.ties, a.dtype)
        convs.append(_Windows(conv, w_out, a_k, m_k, shares))
    ref_logits = taps.reference_logit().expand_as(logits)  # F at alpha = 0
    steps, g, at_zero = _choose_steps(convs, p0, m, model.fc.weight[0], logits - ref_logits, settings, n_steps)
    # [B, T] and one slot past them, where the padded taps of the narrower filters go (_winner_taps)
    flat = torch.zeros(b * t + 1, dtype=model.fc.weight.dtype, device=ids.device)
    attributions = flat[:-1].view(b, t)
    forward = _Forward(rows.flatten(), torch.arange(b, device=ids.device) * rows[0].numel(), None, [(0, a)])
    tokens, values, conv_of = _winner_taps(taps, forward, m, first, tied, g, settings.ties, t)
    if at_zero is None:
        flat.index_add_(0, tokens, values)
    for k, w in enumerate(convs) if at_zero is not None else ():
        # this filter size's winners (the others' to the spare slot), then its alpha = 0 part, as before
        own = (conv_of == k).repeat_interleave(taps.widest)
        flat.index_add_(0, torch.where(own, tokens, b * t), values)
        # at alpha = 0 every valid window ties (all equal p0)
        block = w.taps.table.view(taps.vocab + 1, taps.stride, -1)[:, w.taps.offset : w.taps.offset + w.taps.fs]
        per_token = (block.reshape(-1, block.shape[2]) @ w.gradient_at_zero()).view(-1, w.taps.fs)  # [V + 1, fs]
        share = at_zero.unsqueeze(1) * w.zero_shares  # [B, T']
        n = w.a.shape[1]
        for j in range(w.taps.fs):
            attributions[:, j : j + n] += share * per_token[:, j][ids[:, j : j + n]]
    delta = attributions.sum(dim=1) - (logits - ref_logits)
    return Attribution(attributions, delta, logits, ref_logits, steps, settings.method, "fast", settings.ties)


def _has_zero_node(settings: IGSettings, n_steps: int) -> bool:
    """Whether the rule has a node at alpha = 0 (riemann_left, riemann_trapezoid), where every window ties."""
    return settings.method != EXACT and quadrature(settings.method, n_steps)[0][0] == 0.0


class _Forward(NamedTuple):
    """The forward pass's table rows, for the backward scatter: of one chunk (``_fast``) or of all
    the chunks of a batch (``_fast_batch``), rows numbered in the order of ``m`` and ``first``."""

    rows: torch.Tensor  # every window's S table rows, all chunks one after the other, flat
    row_base: torch.Tensor  # [B] where each row's windows start in ``rows``
    out_row: torch.Tensor | None  # [B] each row's row in the output (None: the same)
    a_parts: list  # (first row, a [rows, T', C * F]) per chunk, for ties


@torch.inference_mode()
def _fast_batch(taps: TapEngine, ids, lengths, order, chunks, settings: IGSettings, n_steps: int) -> Attribution:
    """``_fast`` for all chunks of the plan in one call, for rules without a node at alpha = 0.

    Each chunk's forward pass (table rows, maxima, logits) runs at its own width, as in one call
    per chunk; what follows is per channel or per winner ([B, C * F], not windows), so it runs
    once for the batch: a call's fixed cost of small kernels, paid once instead of per length
    group. Per row the same sums in the same order as ``_fast`` per chunk (same bits); the
    batch's rows come in the plan's order and go back with one permutation at the end."""
    taps.check()
    model = taps.model
    b, t = ids.shape
    nf = taps.n_filters
    w_fc = model.fc.weight[0].split(nf)
    p0 = torch.cat([conv.p0 for conv in taps.convs])  # [C * F]
    rows, bases, parts, ms, firsts, tieds, logits = [], [], [], [], [], [], []
    offset = 0
    for start, end, width in chunks:
        sel = order[start:end]
        rows_c, a = taps.windows(taps.token_rows(ids[sel, :width], lengths[sel]), _GROUP)
        m, first, tied = _maxima(a)
        on = F.relu(p0 + m)
        logit = model.fc.bias[0]
        for k, w_out in enumerate(w_fc):  # per chunk: a matrix-vector product's bits depend on its rows
            logit = logit + on[:, k * nf : (k + 1) * nf] @ w_out
        rows.append(rows_c.flatten())
        bases.append(offset + torch.arange(end - start, device=ids.device) * rows_c[0].numel())
        parts.append((start, a))
        offset += rows_c.numel()
        ms.append(m), firsts.append(first), tieds.append(tied), logits.append(logit)
    m, logits = torch.cat(ms), torch.cat(logits)  # [B, C * F], [B] in the plan's order
    ref_logits = taps.reference_logit().expand_as(logits)
    convs = [
        _Windows(conv, w_out, None, m[:, k * nf : (k + 1) * nf], None)
        for k, (conv, w_out) in enumerate(zip(taps.convs, w_fc))
    ]
    steps, g, _ = _choose_steps(convs, p0, m, model.fc.weight[0], logits - ref_logits, settings, n_steps)
    forward = _Forward(torch.cat(rows), torch.cat(bases), order, parts)
    tokens, values, _ = _winner_taps(taps, forward, m, torch.cat(firsts), torch.cat(tieds), g, settings.ties, t)
    flat = torch.zeros(b * t + 1, dtype=model.fc.weight.dtype, device=ids.device)
    flat.index_add_(0, tokens, values)
    attributions = flat[:-1].view(b, t)  # in the batch's own row order
    # each row summed over its chunk's width, as its own call would
    sums = torch.cat([attributions[order[start:end], :width].sum(dim=1) for start, end, width in chunks])
    back = torch.argsort(order)
    delta = (sums - (logits - ref_logits)).take(back)
    return Attribution(
        attributions,
        delta,
        logits.take(back),
        ref_logits.clone(),
        steps.take(back),
        settings.method,
        "fast",
        settings.ties,
    )


def _zero_shares(valid: torch.Tensor, ties: str, dtype: torch.dtype) -> torch.Tensor:
    """[B, T'] each window's share of a channel's gradient at alpha = 0, where all valid windows tie:
    even over the valid windows (``split``), or all to the first window (``first``)."""
    shares = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    if ties == "first":
        return shares.index_fill_(1, torch.zeros(1, dtype=torch.long, device=valid.device), 1.0)
    return shares.masked_fill_(valid, 1.0) / valid.sum(dim=1, keepdim=True)


def _winner_taps(taps: TapEngine, forward: _Forward, m, first, tied, g, ties: str, t: int):
    """Backward through each channel's winning window(s): token t*+j gets share * (e - e0) . W[f, :, j],
    the table entry already looked up in the forward pass (``forward``); ``m``, ``first``,
    ``tied``, ``g``: [B, C * F] from ``_maxima``, and the channels' weights.

    Returns (flat [B, T] index, value) per tap of every winner (padded to the widest filter: the
    padding's index is the spare slot B * T), and the filter size index per winner, to add into the
    attributions [B, T] in the order a pass per filter size would add them: filter size by
    filter size, and in each ``first``: by row then channel; ``split``: by row, window, channel,
    as ``nonzero`` lists them."""
    b, cf = g.shape
    nf = taps.n_filters
    if ties == "first":  # the first maximal window, as F.max_pool1d's backward routes it
        order = torch.arange(b * cf, device=g.device).view(b, -1, nf).transpose(0, 1).flatten()  # by size, row, channel
        row, c = order // cf, order % cf
        start, share = first.take(order), g.take(order)
    else:  # split: every window equal to the max gets an even share, as amax's backward
        row, start, c, copies = _split_winners(forward, m, first, tied, nf)  # [N] each; N = B*C*F without ties
        share = g.take(row * cf + c)
        if copies is not None:
            share = share / copies
    k, ch = c // nf, c % nf  # [N] filter size, channel
    # each winner's taps, padded to the widest filter: [N, widest]; padding goes to the spare slot b * t
    at = (forward.row_base.take(row) + start * taps.stride).unsqueeze(1) + taps.tap_rows[k]
    table = taps.convs[0].table
    values = table.view(-1).take(forward.rows.take(at) * table.shape[1] + ch.unsqueeze(1)) * share.unsqueeze(1)
    j = torch.arange(taps.widest, device=g.device)
    out_row = row if forward.out_row is None else forward.out_row.take(row)
    tokens = torch.where(taps.tap_padding[k], b * t, (out_row * t + start).unsqueeze(1) + j)  # flat [B, T] index
    return tokens.flatten(), values.flatten(), k


_GROUP = 16  # windows per group in _maxima


def _maxima(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a [B, T', C * F] (T' a multiple of _GROUP) -> each channel's max [B, C * F], its first window,
    and whether another window reaches it too (a tie: copies of a repeated n-gram).

    One ``amax`` over the windows in groups of _GROUP, the rest on [B, T' / _GROUP, C * F] and on
    the winning group alone: ``max`` with its indices over all of ``a`` cost three times ``amax``,
    a second pass to find ties as much again. The first maximal group, then its first maximal
    window, is the first maximal window: the same as ``max``/``argmax`` give."""
    b, n, cf = a.shape
    groups = a.view(b, n // _GROUP, _GROUP, cf)
    group_max = groups.amax(dim=2)  # [B, T' / G, C * F]
    m = group_max.amax(dim=1)  # [B, C * F]
    at_max = group_max == m.unsqueeze(1)
    group = _first_true(at_max)  # the first group reaching the max
    winning = groups.gather(1, group.view(b, 1, 1, cf).expand(b, 1, _GROUP, cf)).squeeze(1)  # [B, G, C * F]
    hits = winning == m.unsqueeze(1)
    first = group * _GROUP + _first_true(hits)
    tied = (hits.sum(dim=1) > 1) | (at_max.sum(dim=1) > 1)
    return m, first, tied


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """[B, K, X] bool, a True in each [b, :, x] -> [B, X] the index of the first: the largest of the
    weights K, K - 1, ..., 1 where True (``argmax`` over dim 1 cost ten times this)."""
    k = mask.shape[1]
    weights = torch.arange(k, 0, -1, dtype=torch.int32, device=mask.device).view(1, k, 1)
    return k - (mask * weights).amax(dim=1).long()


def _split_winners(forward: _Forward, m, first, tied, nf: int):
    """(row, window, channel, copies) of every window equal to its channel's max, sorted by filter
    size, row, window, channel; ``copies``: how many windows share that max (int64), None when no
    window does (the usual case). Only the tied channels are searched for all their windows."""
    b, cf = m.shape
    channel = torch.arange(b * cf, device=m.device)  # flat [B, C * F] index
    row, c = channel // cf, channel % cf
    start = first.flatten()
    copies = None
    if bool(tied.any()):
        tb, tc = tied.nonzero(as_tuple=True)  # [K] the tied channels
        alone = ~tied.flatten()  # each the only window at its max: one copy
        found = [(row[alone], start[alone], c[alone], torch.ones_like(channel)[: b * cf - tb.numel()])]
        for lo, a in forward.a_parts:
            mine = (tb >= lo) & (tb < lo + a.shape[0])
            rb, rc = tb[mine], tc[mine]
            hits = a[rb - lo, :, rc] == m[rb, rc].unsqueeze(1)  # [K', T'] their winning windows
            i, tw = hits.nonzero(as_tuple=True)
            found.append((rb[i], tw, rc[i], hits.sum(dim=1)[i]))
        row, start, c, copies = (torch.cat(parts) for parts in zip(*found))
    n = max(a.shape[1] for _, a in forward.a_parts)
    order = torch.argsort((((c // nf) * b + row) * n + start) * nf + c % nf)
    return row.take(order), start.take(order), c.take(order), (copies.take(order) if copies is not None else None)


def _choose_steps(convs: list, p0, m, w_out, gap: torch.Tensor, settings: IGSettings, n_steps: int):
    """Per review: the step count, the channel weights g [B, C * F] (the integrated gradient of
    each channel's max; ``p0`` [C * F], ``m`` [B, C * F], ``w_out`` [C * F]: all filter sizes'),
    and the weight of an alpha = 0 node [B] (None if the rule has none).

    Fixed steps: ``n_steps`` for every review. Adaptive: the first of n_steps, 2 n_steps, ... (up
    to max_steps) whose delta is within rtol -- read off before any backward work, since the
    attributions of a review sum to sum_f g_f * M_f (each winning window's tokens sum to its
    pre-activation M_f), plus for an alpha = 0 node its weight times the mean over valid windows.
    The weights are computed for all filter sizes at once (elementwise: the same values).
    """
    b = gap.shape[0]
    device, dtype = gap.device, gap.dtype
    if settings.method == EXACT:
        return torch.zeros(b, dtype=torch.long, device=device), _time_on(p0, m, None) * w_out, None
    candidates = step_counts(replace(settings, n_steps=n_steps))
    rules = [_rule(settings.method, n, dtype, device) for n in candidates]
    zero_sums = _zero_node_sums(convs) if rules[0][2] else None  # rules[0][2]: the weight of a node at alpha = 0
    choice = None
    for k, (n, rule) in enumerate(zip(candidates, rules)):
        g = _time_on(p0, m, rule) * w_out  # [B, C * F]
        z = torch.full((b,), rule[2], dtype=dtype, device=device)
        delta = (_attribution_sums(convs, g, z, zero_sums) - gap).abs()
        done = (delta <= settings.rtol * gap.abs()) | (delta <= 1e-6) | (k == len(candidates) - 1)
        if choice is None:
            choice = _Choice(torch.full((b,), n, device=device), g, z, done)
        else:
            choice = choice.then(n, g, z, done)
        if bool(choice.done.all()):
            break
    return choice.steps, choice.weights, (choice.at_zero if zero_sums is not None else None)


def _zero_node_sums(convs: list) -> torch.Tensor:
    """[B] per unit of the alpha = 0 node's weight, the attributions it adds, summed: each filter
    size's windows (all tied there) weighted by their ``zero_shares``, times the gradient at zero."""
    return sum(
        (
            torch.where(w.zero_shares.unsqueeze(2) > 0, w.a, 0.0).mul(w.zero_shares.unsqueeze(2)).sum(dim=1)
            * w.gradient_at_zero()
        ).sum(dim=1)
        for w in convs
    )


def _attribution_sums(convs: list, g: torch.Tensor, z: torch.Tensor, zero_sums: torch.Tensor | None) -> torch.Tensor:
    """[B] the sum of a review's attributions under channel weights g [B, C * F]: sum_f g_f * M_f,
    filter size by filter size, plus the alpha = 0 node's weight ``z`` [B] times ``zero_sums``."""
    nf = convs[0].w_out.shape[0]
    total = sum((g[:, k * nf : (k + 1) * nf] * w.m).sum(dim=1) for k, w in enumerate(convs))
    return total if zero_sums is None else total + z * zero_sums


class _Choice(NamedTuple):
    """Adaptive steps so far (``_choose_steps``): per review [B] its steps, channel weights [B, C * F]
    and alpha = 0 node weight, and whether they are final (its delta was within rtol)."""

    steps: torch.Tensor
    weights: torch.Tensor
    at_zero: torch.Tensor
    done: torch.Tensor

    def then(self, n: int, g: torch.Tensor, z: torch.Tensor, done: torch.Tensor) -> _Choice:
        """The reviews not yet final take the next candidate (n steps, weights g, node weight z);
        those that are ``done`` with it become final."""
        take = done & ~self.done
        return _Choice(
            torch.where(take, n, self.steps),
            torch.where(take.unsqueeze(1), g, self.weights),
            torch.where(take, z, self.at_zero),
            self.done | done,
        )


class _Windows(NamedTuple):
    """One filter size's first-pass results, kept for the backward pass."""

    taps: TokenTaps
    w_out: torch.Tensor  # [F] its slice of the linear layer
    a: torch.Tensor | None  # [B, T', F] pre-activations minus p0; -inf past a review's length (a view)
    m: torch.Tensor  # [B, F] max over time (a view)
    zero_shares: torch.Tensor | None  # [B, T'] how the tie at alpha = 0 is shared (``_zero_shares``)

    def gradient_at_zero(self) -> torch.Tensor:
        """[F] the gradient of each channel's max at alpha = 0 (per unit of node weight), shared over
        the windows, which all tie there, by ``zero_shares``: w_out where ReLU(p0) is on."""
        return (self.taps.p0 > 0).to(self.w_out.dtype) * self.w_out


@lru_cache(maxsize=64)
def _rule(
    method: str, n_steps: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Captum's nodes [S] as a tensor, the prefix sums [S + 1] of their weights with the weight of a
    node at alpha = 0 set apart (there all windows tie, which the caller handles), and that weight
    (0.0 if no such node). Cached like ``quadrature``: the tensors are only read, and on a GPU each
    would be a copy per call."""
    alphas, weights = quadrature(method, n_steps)
    a = torch.tensor(alphas, dtype=dtype, device=device)
    c = torch.tensor(weights, dtype=dtype, device=device)
    at_zero = float(weights[0]) if alphas[0] == 0.0 else 0.0
    c = torch.where(a > 0, c, torch.zeros_like(c))
    return a, torch.cat([c.new_zeros(1), c.cumsum(0)]), at_zero


def _time_on(p0: torch.Tensor, m: torch.Tensor, rule: tuple | None) -> torch.Tensor:
    """Weighted measure of the alphas in (0, 1] where ReLU(p0 + alpha * m) is on; ``rule`` None = exact."""
    if rule is None:
        # p0 + a*m > 0  <=>  a > -p0/m (m > 0)  or  a < -p0/m (m < 0)  or  p0 > 0 (m == 0)
        root = (-p0 / m).nan_to_num(0.0, posinf=2.0, neginf=-1.0)
        rising = 1.0 - root.clamp(0.0, 1.0)
        falling = root.clamp(0.0, 1.0)
        flat = (p0 > 0).to(m.dtype).expand_as(m)
        return torch.where(m > 0, rising, torch.where(m < 0, falling, flat))
    # The "on" nodes are a half-line of alpha, so their weight is a prefix sum of the (ascending)
    # nodes' weights up to the root -- O(log S) per channel instead of testing every node.
    a, cum, _ = rule  # [S], [S + 1]
    root = (-p0 / m).nan_to_num(0.0).contiguous()  # [B, F]; m == 0 is handled below
    rising = cum[-1] - cum[torch.searchsorted(a, root, right=True)]  # m > 0: on where alpha > root
    falling = cum[torch.searchsorted(a, root, right=False)]  # m < 0: on where alpha < root
    flat = torch.where(p0 > 0, cum[-1], 0.0).expand_as(m)
    return torch.where(m > 0, rising, torch.where(m < 0, falling, flat))
