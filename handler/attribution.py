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

import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients, TokenReferenceBase
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

from handler.model import SentimentCNN, token_taps, window_mask, window_sums

EXACT = "exact"
METHODS = tuple(SUPPORTED_METHODS) + (EXACT,)
ENGINES = ("fast", "captum")


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

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if self.method == EXACT and self.engine != "fast":
            raise ValueError("method 'exact' needs the fast engine")
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


def fast_engine_applies(model: torch.nn.Module) -> bool:
    return isinstance(model, SentimentCNN) and model.config.output_dim == 1


def layer_ig(model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor, settings: IGSettings) -> Attribution:
    """Attribute each row of ``ids`` [B, T]; falls back to Captum where the fast engine does not apply."""
    if settings.engine == "fast" and not fast_engine_applies(model):
        settings = replace(settings, engine="captum", method="gausslegendre" if settings.method == EXACT else settings.method)
    out = _run(model, ids, lengths, settings, settings.n_steps)
    if not settings.adaptive or settings.method == EXACT:
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
        parts.append((rows, fn(model, ids[rows, :width], lengths[rows], settings.method, n_steps, settings.internal_batch_size)))
    dtype = parts[0][1].attributions.dtype
    out = Attribution(torch.zeros(b, t, dtype=dtype, device=ids.device),
                      *(torch.empty(b, dtype=dtype, device=ids.device) for _ in range(3)),
                      n_steps=torch.full((b,), 0 if settings.method == EXACT else n_steps, device=ids.device),
                      method=settings.method, engine=settings.engine)
    for rows, res in parts:
        width = res.attributions.shape[1]
        out.attributions[rows, :width] = res.attributions
        out.delta[rows], out.logits[rows], out.ref_logits[rows] = res.delta, res.logits, res.ref_logits
    return out


def _row_cost(model, tokens: int) -> int:
    """Floats of activations one row of ``tokens`` needs at once in an engine call.

    Fast engine: one convolution's pre-activations and its winner mask (~2 x F per token) and the
    window's table rows (fs int64 per token).
    """
    if isinstance(model, SentimentCNN):
        c = model.config
        return tokens * (2 * c.n_filters + 2 * max(c.filter_sizes))
    return tokens * 1024


def _captum(model, ids, lengths, method, n_steps, internal_batch_size) -> Attribution:
    """Captum's LayerIntegratedGradients; runs with autograd on even inside TorchServe's inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        ids, lengths = ids.clone(), lengths.clone()  # inference tensors cannot be saved for backward
        ref = reference_ids(ids, model.embedding.padding_idx)
        lig = LayerIntegratedGradients(model, model.embedding)
        attr, delta = lig.attribute(ids, ref, additional_forward_args=(lengths,), n_steps=n_steps,
                                    method=method, internal_batch_size=internal_batch_size,
                                    return_convergence_delta=True)
        with torch.no_grad():
            logits, ref_logits = model(ids, lengths), model(ref, lengths)
    return Attribution(attr.sum(dim=2).detach(), delta.detach(), logits, ref_logits, None, method, "captum")


@torch.no_grad()
def _fast(model: SentimentCNN, ids, lengths, method, n_steps, _internal_batch_size=None) -> Attribution:
    b, t = ids.shape
    rule = None if method == EXACT else _rule(method, n_steps, model.fc.weight.dtype, ids.device)
    w_fc = model.fc.weight[0].split(model.config.n_filters)  # len(fs) x [F]
    attributions = torch.zeros(b, t, dtype=model.fc.weight.dtype, device=ids.device)  # [B, T]
    logits = ref_logits = model.fc.bias[0]
    shortest = int(lengths.min())
    for taps, w_out in zip(token_taps(model), w_fc):
        fs, n, vocab = taps.fs, t - taps.fs + 1, taps.table.shape[0] // taps.fs
        rows, a = window_sums(taps, ids)  # [B, T', fs] table rows per window, [B, T', F] A = conv(e - e0)
        valid = window_mask(lengths, fs, n)  # [B, T']
        tail = max(shortest - fs + 1, 0)  # windows before this one are valid in every row
        a[:, tail:].masked_fill_(~valid[:, tail:, None], float("-inf"))
        m = a.amax(dim=1)  # [B, F]
        # F at alpha = 1 and 0 from the same pre-activations: the model's own max-pool and fc.
        logits = logits + F.relu(taps.p0 + m) @ w_out  # [B]
        ref_logits = ref_logits + F.relu(taps.p0) @ w_out
        g = _time_on(taps.p0, m, rule) * w_out  # [B, F] summed gradient of each channel's max
        winners = a == m.unsqueeze(1)  # [B, T', F]; ties split g evenly, as amax's backward
        row, start, ch = winners.nonzero(as_tuple=True)  # [N] each; N = B*F without ties
        share = g[row, ch] / winners.sum(dim=1)[row, ch]  # [N]
        # Backward through the winning window: token t*+j gets share * (e - e0) . W[f, :, j],
        # which is the table entry already looked up in the forward pass.
        where = rows[row, start]  # [N, fs] table rows of the winning windows
        values = taps.table[where, ch.unsqueeze(1)] * share.unsqueeze(1)  # [N, fs]
        tokens = (row * t + start).unsqueeze(1) + torch.arange(fs, device=ids.device)  # [N, fs] flat [B, T] index
        attributions.view(-1).index_add_(0, tokens.flatten(), values.flatten())
        if rule is not None and rule[2]:  # at alpha = 0 every valid window ties (all equal p0): amax splits evenly
            coef = rule[2] * (taps.p0 > 0).to(g.dtype) * w_out  # [F]
            per_token = (taps.table @ coef).view(fs, vocab)  # [fs, V]
            even = valid / valid.sum(dim=1, keepdim=True)  # [B, T']
            for j in range(fs):
                attributions[:, j : j + n] += even * per_token[j][ids[:, j : j + n]]
    ref_logits = ref_logits.expand_as(logits)
    delta = attributions.sum(dim=1) - (logits - ref_logits)
    return Attribution(attributions, delta, logits, ref_logits, None, method, "fast")


def _rule(method: str, n_steps: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Captum's nodes [S] and weights [S] as tensors, the weight of a node at alpha = 0 set apart
    (there all windows tie, which the caller handles), and that weight (0.0 if no such node)."""
    alphas, weights = quadrature(method, n_steps)
    a = torch.tensor(alphas, dtype=dtype, device=device)
    c = torch.tensor(weights, dtype=dtype, device=device)
    at_zero = float(weights[0]) if alphas[0] == 0.0 else 0.0
    return a, torch.where(a > 0, c, torch.zeros_like(c)), at_zero


def _time_on(p0: torch.Tensor, m: torch.Tensor, rule: tuple | None) -> torch.Tensor:
    """Weighted measure of the alphas in (0, 1] where ReLU(p0 + alpha * m) is on; ``rule`` None = exact."""
    if rule is None:
        # p0 + a*m > 0  <=>  a > -p0/m (m > 0)  or  a < -p0/m (m < 0)  or  p0 > 0 (m == 0)
        root = (-p0 / m).nan_to_num(0.0, posinf=2.0, neginf=-1.0)
        rising = (1.0 - root.clamp(0.0, 1.0))
        falling = root.clamp(0.0, 1.0)
        flat = (p0 > 0).to(m.dtype).expand_as(m)
        return torch.where(m > 0, rising, torch.where(m < 0, falling, flat))
    a, c, _ = rule
    on = (p0.unsqueeze(-1) + a * m.unsqueeze(-1)) > 0  # [B, F, S]: tiny, only channels x steps
    return (on.to(m.dtype) * c).sum(dim=-1)
