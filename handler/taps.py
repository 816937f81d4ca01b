"""The tap-table engine: a SentimentCNN's convolutions as per-token tables, owned by one object.

The convolutions only ever see the vocabulary's V token vectors, so projecting them once
(12 x V x F floats: 120 MB for the shipped model) turns every later convolution into fs row
lookups per window -- one ``embedding_bag`` -- for predictions and Layer IG alike (on CPU about
10x cheaper than the convolution at one thread). Windows with the same tokens also sum the same
rows in the same order, so they get bit-identical values: max-pool ties between copies of a
repeated phrase are exact.

A :class:`TapEngine` is built once per model (a TorchServe worker builds it in ``initialize``) and
passed to whoever needs it. Callers that pass none get the one attached to the model
(``model.tap_engine``, set by ``attach`` or on first use); there is no global cache. Its tables
describe the weights it was built from: if those change, it refuses to run (:class:`StaleTablesError`)
instead of answering for the old weights -- build (or ``attach``) a new one.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from handler.model import SentimentCNN, conv1d_weight, window_mask


class StaleTablesError(RuntimeError):
    """The model's weights changed after its TapEngine was built."""


@dataclass(frozen=True)
class TokenTaps:
    """One convolution as per-vocabulary-token projections: ``table[j * V + v, f]`` is
    (e_v - e_pad) . W[f, :, j], tap j of filter f on token v's embedding minus the padding
    token's. A window's pre-activation is then p0 plus the sum of fs table rows, one per token."""

    table: torch.Tensor  # [fs * V, F]
    p0: torch.Tensor  # [F] pre-activation of an all-padding window (bias included)
    fs: int


def length_groups(
    sorted_lengths: list[int], row_cost: Callable[[int], int] | None = None, budget: int | None = None
) -> list[tuple[int, int]]:
    """Chunks ``(start, end)`` of ascending lengths: each chunk runs padded to its own longest row.

    A group holds lengths at most 2x its shortest, so no review is padded to more than twice its
    own length (IMDB reviews run from a few tokens to 512; padding all to the longest tripled the
    work). With ``row_cost`` (floats one row of n tokens needs) and ``budget`` (floats per chunk),
    a group is cut further so that no chunk exceeds the budget (one row at least).
    """
    chunks = []
    start = 0
    while start < len(sorted_lengths):
        end = bisect.bisect_right(sorted_lengths, 2 * sorted_lengths[start], lo=start)
        rows = end - start
        if row_cost is not None and budget is not None:
            rows = max(1, budget // row_cost(sorted_lengths[end - 1]))
        for s in range(start, end, rows):
            chunks.append((s, min(s + rows, end)))
        start = end
    return chunks


def _weights_stamp(model: SentimentCNN) -> tuple:
    params = [model.embedding.weight] + [p for conv in model.convs for p in (conv.weight, conv.bias)]
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)


class TapEngine:
    """The tap tables of one model's convolutions, and the predictions they give."""

    def __init__(self, model: SentimentCNN):
        self.model = model
        self._stamp = _weights_stamp(model)
        with torch.no_grad():
            emb = model.embedding.weight  # [V, E]
            emb_pad = emb[model.embedding.padding_idx]  # [E]
            self.convs: list[TokenTaps] = []
            for conv in model.convs:
                w = conv1d_weight(conv)  # [F, E, fs]
                table = torch.einsum("ve,fej->jvf", emb - emb_pad, w).reshape(-1, w.shape[0]).contiguous()
                self.convs.append(TokenTaps(table, conv.bias + torch.einsum("fej,e->f", w, emb_pad), w.shape[2]))

    def check(self) -> None:
        """Raise if the model's weights changed (in place or replaced) since the tables were built."""
        if _weights_stamp(self.model) != self._stamp:
            raise StaleTablesError(
                "the model's weights changed after its TapEngine was built; build a new one (handler.taps.attach)"
            )

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> logits [B] as ``model(ids, lengths)`` in eval mode, in length groups.

        ReLU is monotonic and p0 is the same for every window, so max_t ReLU(p0 + A_t) = ReLU(p0 + max_t A_t).
        """
        self.check()
        order = torch.argsort(lengths)
        sorted_lengths = lengths[order].tolist()  # one device sync
        out = torch.empty(len(sorted_lengths), dtype=self.model.fc.weight.dtype, device=ids.device)
        for start, end in length_groups(sorted_lengths):
            rows = order[start:end]
            width, shortest = sorted_lengths[end - 1], sorted_lengths[start]
            out[rows] = self._logits(ids[rows, :width], lengths[rows], shortest)
        return out

    def _logits(self, ids: torch.Tensor, lengths: torch.Tensor, shortest: int) -> torch.Tensor:
        model = self.model
        logits = model.fc.bias[0]
        for taps, w_out in zip(self.convs, model.fc.weight[0].split(model.config.n_filters)):
            _, a = window_sums(taps, ids, lengths, shortest)  # [B, T', F]
            logits = logits + F.relu(taps.p0 + a.amax(dim=1)) @ w_out  # [B]
        return logits


def window_sums(
    taps: TokenTaps, ids: torch.Tensor, lengths: torch.Tensor, shortest: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] -> (table rows [B, T', fs], pre-activations minus p0 [B, T', F]), T' = T - fs + 1;
    windows that reach past a row's length are -inf, so they never win a max-pool. ``shortest`` is
    min(lengths), known to the caller (read once, not with a device sync per filter size)."""
    b, t = ids.shape
    vocab = taps.table.shape[0] // taps.fs
    rows = ids.unfold(1, taps.fs, 1) + torch.arange(taps.fs, device=ids.device) * vocab  # [B, T', fs]
    a = F.embedding_bag(rows.reshape(-1, taps.fs), taps.table, mode="sum").view(b, rows.shape[1], -1)
    tail = max(shortest - taps.fs + 1, 0)  # windows before this one are valid in every row
    if tail < a.shape[1]:
        a[:, tail:].masked_fill_(~window_mask(lengths, taps.fs, a.shape[1])[:, tail:, None], float("-inf"))
    return rows, a


def attach(model: SentimentCNN) -> TapEngine:
    """Build ``model``'s engine and keep it on the model as ``model.tap_engine`` (compatibility:
    see ``handler.model.token_taps``)."""
    model.tap_engine = TapEngine(model)
    return model.tap_engine


def engine_for(model: SentimentCNN, taps: TapEngine | None = None) -> TapEngine:
    """``taps`` if given, else the engine attached to ``model`` (``attach``), attached now if there is
    none: building the tables costs ~0.3 s on CPU for the shipped model, so a caller that passes no
    engine (a benchmark loop, a script) must not pay it per call. The engine is on the model in
    plain sight (``model.tap_engine``), and refuses to answer once the weights change."""
    taps = taps or getattr(model, "tap_engine", None) or attach(model)
    if taps.model is not model:
        raise ValueError("this TapEngine was built for another model")
    return taps
