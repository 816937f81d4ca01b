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
backward products come from per-token tables (``model.token_taps``), so no convolution runs at all.
Ties (identical windows) share the gradient equally, as ``amax``'s backward does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients, TokenReferenceBase
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

from handler.model import SentimentCNN, TokenTaps, token_taps, window_mask, window_sums

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
    # Rows per chunk are sized so one chunk's activations stay within this many floats.
    chunk_elements: int = 4_000_000
    internal_batch_size: int | None = None  # captum engine only
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


def layer_ig(model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor, settings: IGSettings) -> Attribution:
    """Attribute each row of ``ids`` [B, T]; falls back to Captum where the fast engine does not apply."""
    if settings.engine == "fast" and not fast_engine_applies(model):
        settings = replace(
            settings, engine="captum", method="gausslegendre" if settings.method == EXACT else settings.method
        )
    out = _run(model, ids, lengths, settings, settings.n_steps)
    if not settings.adaptive or settings.method == EXACT or settings.engine == "fast":  # fast: adaptive inside
        return out
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
    return out


def _unconverged(out: Attribution, rtol: float) -> torch.Tensor:
    return (out.relative_delta() > rtol) & (out.delta.abs() > 1e-6)


def _run(model, ids, lengths, settings: IGSettings, n_steps: int) -> Attribution:
    """Length-bucketed chunks: a short review is never padded to the batch's longest one."""
    order = torch.argsort(lengths)
    sorted_lengths = lengths[order].tolist()  # one device sync for all the chunks' widths
    b, t = ids.shape
    rows_per_chunk = max(1, settings.chunk_elements // _row_cost(model, max(t, 1)))
    fn = _fast if settings.engine == "fast" else _captum
    parts = []
    for start in range(0, b, rows_per_chunk):
        rows = order[start : start + rows_per_chunk]
        width = sorted_lengths[min(start + rows_per_chunk, b) - 1]
        parts.append((rows, fn(model, ids[rows, :width], lengths[rows], settings, n_steps)))
    dtype = parts[0][1].attributions.dtype
    out = Attribution(
        torch.zeros(b, t, dtype=dtype, device=ids.device),
        *(torch.empty(b, dtype=dtype, device=ids.device) for _ in range(3)),
        n_steps=torch.empty(b, dtype=torch.long, device=ids.device),
        method=settings.method,
        engine=settings.engine,
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
    """Captum's LayerIntegratedGradients; runs with autograd on even inside TorchServe's inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        ids, lengths = ids.clone(), lengths.clone()  # inference tensors cannot be saved for backward
        ref = reference_ids(ids, model.embedding.padding_idx)
        lig = LayerIntegratedGradients(model, model.embedding)
        attr, delta = lig.attribute(
            ids,
            ref,
            additional_forward_args=(lengths,),
            n_steps=n_steps,
            method=settings.method,
            internal_batch_size=settings.internal_batch_size,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            logits, ref_logits = model(ids, lengths), model(ref, lengths)
    return Attribution(
        attr.sum(dim=2).detach(),
        delta.detach(),
        logits,
        ref_logits,
        torch.full_like(lengths, n_steps),
        settings.method,
        "captum",
    )


@torch.no_grad()
def _fast(model: SentimentCNN, ids, lengths, settings: IGSettings, n_steps: int) -> Attribution:
    """Two passes: the windows' pre-activations and maxima of every filter size, then the backward
    scatter with each review's step count -- chosen in between, by ``_choose_steps``, from [B, F]
    quantities alone, so adaptive steps cost no extra pass over the windows."""
    b, t = ids.shape
    dtype = model.fc.weight.dtype
    w_fc = model.fc.weight[0].split(model.config.n_filters)  # len(fs) x [F]
    logits = ref_logits = model.fc.bias[0]
    shortest = int(lengths.min())
    convs = []
    for taps, w_out in zip(token_taps(model), w_fc):
        rows, a = window_sums(
            taps, ids, lengths, shortest
        )  # [B, T', fs] table rows per window, [B, T', F] A = conv(e - e0)
        valid = window_mask(lengths, taps.fs, a.shape[1])  # [B, T']
        m = a.amax(dim=1)  # [B, F]
        # F at alpha = 1 and 0 from the same pre-activations: the model's own max-pool and fc.
        logits = logits + F.relu(taps.p0 + m) @ w_out  # [B]
        ref_logits = ref_logits + F.relu(taps.p0) @ w_out
        convs.append(_Windows(taps, w_out, rows, a, valid, m))
    ref_logits = ref_logits.expand_as(logits)
    steps, weights, at_zero = _choose_steps(convs, logits - ref_logits, settings, n_steps)

    attributions = torch.zeros(b, t, dtype=dtype, device=ids.device)  # [B, T]
    for w, g in zip(convs, weights):
        fs, n = w.taps.fs, w.a.shape[1]
        winners = w.a == w.m.unsqueeze(1)  # [B, T', F]; ties split g evenly, as amax's backward
        row, start, ch = winners.nonzero(as_tuple=True)  # [N] each; N = B*F without ties
        share = g[row, ch] / winners.sum(dim=1)[row, ch]  # [N]
        # Backward through the winning window: token t*+j gets share * (e - e0) . W[f, :, j],
        # which is the table entry already looked up in the forward pass.
        values = w.taps.table[w.rows[row, start], ch.unsqueeze(1)] * share.unsqueeze(1)  # [N, fs]
        tokens = (row * t + start).unsqueeze(1) + torch.arange(fs, device=ids.device)  # [N, fs] flat [B, T] index
        attributions.view(-1).index_add_(0, tokens.flatten(), values.flatten())
        if at_zero is not None:  # at alpha = 0 every valid window ties (all equal p0): amax splits evenly
            per_token = (w.taps.table @ w.gradient_at_zero()).view(fs, -1)  # [fs, V]
            even = at_zero.unsqueeze(1) * w.valid / w.valid.sum(dim=1, keepdim=True)  # [B, T']
            for j in range(fs):
                attributions[:, j : j + n] += even * per_token[j][ids[:, j : j + n]]
    delta = attributions.sum(dim=1) - (logits - ref_logits)
    return Attribution(attributions, delta, logits, ref_logits, steps, settings.method, "fast")


def _choose_steps(convs: list, gap: torch.Tensor, settings: IGSettings, n_steps: int):
    """Per review: the step count, each filter size's channel weights g [B, F] (the integrated
    gradient of each channel's max), and the weight of an alpha = 0 node [B] (None if the rule has none).

    Fixed steps: ``n_steps`` for every review. Adaptive: the first of n_steps, 2 n_steps, ... (up
    to max_steps) whose delta is within rtol -- read off before any backward work, since the
    attributions of a review sum to sum_f g_f * M_f (each winning window's tokens sum to its
    pre-activation M_f), plus for an alpha = 0 node its weight times the mean over valid windows.
    """
    b = gap.shape[0]
    device, dtype = gap.device, gap.dtype
    if settings.method == EXACT:
        return (
            torch.zeros(b, dtype=torch.long, device=device),
            [_time_on(w.taps.p0, w.m, None) * w.w_out for w in convs],
            None,
        )
    candidates = step_counts(replace(settings, n_steps=n_steps))
    rules = [_rule(settings.method, n, dtype, device) for n in candidates]
    zero_sums = None  # [B] per unit of the alpha = 0 weight: the attributions it adds, summed
    if rules[0][2]:  # the rule has a node at alpha = 0
        zero_sums = sum(
            (
                torch.where(w.valid.unsqueeze(2), w.a, 0.0).sum(dim=1)
                / w.valid.sum(dim=1, keepdim=True)
                * w.gradient_at_zero()
            ).sum(dim=1)
            for w in convs
        )
    chosen = steps = weights = at_zero = None
    for k, (n, rule) in enumerate(zip(candidates, rules)):
        g = [_time_on(w.taps.p0, w.m, rule) * w.w_out for w in convs]  # [B, F] each
        z = torch.full((b,), rule[2], dtype=dtype, device=device)
        total = sum((gi * w.m).sum(dim=1) for gi, w in zip(g, convs))  # [B] sum of the attributions
        if zero_sums is not None:
            total = total + z * zero_sums
        delta = (total - gap).abs()
        done = (delta <= settings.rtol * gap.abs()) | (delta <= 1e-6) | (k == len(candidates) - 1)
        if chosen is None:
            steps, weights, at_zero, chosen = torch.full((b,), n, device=device), g, z, done
        else:
            take = done & ~chosen
            steps = torch.where(take, n, steps)
            weights = [torch.where(take.unsqueeze(1), gi, wi) for gi, wi in zip(g, weights)]
            at_zero = torch.where(take, z, at_zero)
            chosen = chosen | done
        if bool(chosen.all()):
            break
    return steps, weights, (at_zero if zero_sums is not None else None)


class _Windows(NamedTuple):
    """One filter size's first-pass results, kept for the backward pass."""

    taps: TokenTaps
    w_out: torch.Tensor  # [F] its slice of the linear layer
    rows: torch.Tensor  # [B, T', fs] table rows of each window
    a: torch.Tensor  # [B, T', F] pre-activations minus p0; -inf past a review's length
    valid: torch.Tensor  # [B, T'] bool
    m: torch.Tensor  # [B, F] max over time

    def gradient_at_zero(self) -> torch.Tensor:
        """[F] the gradient of each channel's max at alpha = 0 (per unit of node weight), spread
        evenly over the windows, which all tie there: w_out where ReLU(p0) is on."""
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
