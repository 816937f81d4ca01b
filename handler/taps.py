"""The tap-table engine: a SentimentCNN's convolutions as per-token tables, owned by one object.

The convolutions only ever see the vocabulary's V token vectors, so projecting them once
(12 x V x F floats: 120 MB for the shipped model, each token's 12 rows together) turns every later convolution into fs row
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

from handler.model import SentimentCNN, conv1d_weight


class StaleTablesError(RuntimeError):
    """The model's weights changed after its TapEngine was built."""


@dataclass(frozen=True)
class TokenTaps:
    """One convolution as per-vocabulary-token projections, in the table its engine shares among
    its convolutions: ``table[v * S + offset + j, f]`` is (e_v - e_pad) . W[f, :, j], tap j of
    filter f on token v's embedding minus the padding token's, where S counts the taps of all
    filter sizes. A window's pre-activation is then p0 plus the sum of fs table rows, one per token.

    Each token's S rows are one block (one token's taps are read together, not from fs places
    1/3 of the table apart), and block V, past the vocabulary, is -inf: positions past a review's
    length point there (``TapEngine.token_rows``), so a window that reaches past it sums to -inf
    and never wins a max-pool, with no mask to apply."""

    table: torch.Tensor  # [(V + 1) * S, F], shared with the engine's other convolutions
    p0: torch.Tensor  # [F] pre-activation of an all-padding window (bias included)
    fs: int
    offset: int  # this convolution's first row within a token's block


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
            sizes = [conv.kernel_size[0] for conv in model.convs]
            self.vocab, self.stride = emb.shape[0], sum(sizes)
            table = torch.empty(
                (self.vocab + 1) * self.stride, model.config.n_filters, dtype=emb.dtype, device=emb.device
            )
            blocks = table.view(self.vocab + 1, self.stride, -1)  # [V + 1, S, F]
            blocks[self.vocab] = float("-inf")
            self.convs: list[TokenTaps] = []
            offset = 0
            for conv in model.convs:
                w = conv1d_weight(conv)  # [F, E, fs]
                # computed as [fs, V, F] (the tables' former layout, so the same sums), stored per token
                per_tap = torch.einsum("ve,fej->jvf", emb - emb_pad, w)
                blocks[: self.vocab, offset : offset + w.shape[2]] = per_tap.transpose(0, 1)
                p0 = conv.bias + torch.einsum("fej,e->f", w, emb_pad)
                self.convs.append(TokenTaps(table, p0, w.shape[2], offset))
                offset += w.shape[2]
            # The windows of all filter sizes in one embedding_bag (``windows``): window t of every
            # size starts at token t; tap s of a token block belongs to position j(s) of its window.
            self.narrowest, self.widest = min(sizes), max(sizes)
            self.n_filters = model.config.n_filters
            self._tap_position = torch.tensor([j for fs in sizes for j in range(fs)], device=emb.device)  # [S]
            self._taps = torch.arange(self.stride, device=emb.device)  # [S]
            self.offsets = torch.tensor([c.offset for c in self.convs], device=emb.device)  # [C] first taps
            # per convolution, its taps padded to the widest filter: row within a token block (kept
            # inside the block), and whether it is padding
            j = torch.arange(self.widest, device=emb.device)
            self.tap_rows = (self.offsets.unsqueeze(1) + j).clamp(max=self.stride - 1)  # [C, widest]
            self.tap_padding = j >= torch.tensor(sizes, device=emb.device).unsqueeze(1)  # [C, widest]
            self._bag_offsets = torch.zeros(0, dtype=torch.long, device=emb.device)
            self._reference: tuple | None = None

    def token_rows(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> [B, T] each position's block in the table: id * S, or the -inf block past
        the row's length (``lengths``: each row's min_len-padded length)."""
        inside = torch.arange(ids.shape[1], device=ids.device) < lengths.unsqueeze(1)
        return torch.where(inside, ids * self.stride, self.vocab * self.stride)

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
            width = sorted_lengths[end - 1]
            out[rows] = self._logits(ids[rows, :width], lengths[rows])
        return out

    def _logits(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        model = self.model
        logits = model.fc.bias[0]
        m = self.windows(self.token_rows(ids, lengths))[1].amax(dim=1)  # [B, C * F]
        for k, (taps, w_out) in enumerate(zip(self.convs, model.fc.weight[0].split(self.n_filters))):
            logits = logits + F.relu(taps.p0 + m[:, k * self.n_filters : (k + 1) * self.n_filters]) @ w_out  # [B]
        return logits

    def windows(self, blocks: torch.Tensor, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """blocks [B, T] (``token_rows``) -> (table rows [B, T', S], pre-activations minus p0
        [B, T', C * F]) of every window of every filter size, T' = T - narrowest + 1 windows each
        (the narrowest filter's count, rounded up to a ``multiple``), in one ``embedding_bag`` call.

        Column k * F + f is filter f of convolution k; rows[..., offset_k : offset_k + fs_k] are its
        window's table rows. A window that reaches past a row's length, or past T (the wider
        filters' last T' - (T - fs + 1) windows, which the narrowest has and they have not), sums a
        row of the -inf block: it is -inf and never wins a max-pool. Each window sums the same rows
        in the same order as a call per filter size would (bit for bit)."""
        b, t = blocks.shape
        n = -(-(t - self.narrowest + 1) // multiple) * multiple
        padded = F.pad(blocks, (0, n - 1 + self.widest - t), value=self.vocab * self.stride)
        rows = padded.unfold(1, self.widest, 1).index_select(2, self._tap_position) + self._taps  # [B, T', S]
        a = F.embedding_bag(rows.reshape(-1), self.convs[0].table, self.bag_offsets(b * n), mode="sum")
        return rows, a.view(b, n, -1)

    def bag_offsets(self, windows: int) -> torch.Tensor:
        """The first row of each bag of ``windows`` windows of all sizes, [windows * C]: window w's
        bag of convolution k starts at w * S + offset_k. Kept between calls, grown when short."""
        if self._bag_offsets.numel() < windows * len(self.convs):
            grown = max(windows, 2 * self._bag_offsets.numel() // len(self.convs), 4096)
            starts = torch.arange(grown, device=self.offsets.device).unsqueeze(1) * self.stride
            self._bag_offsets = (starts + self.offsets).flatten()
        return self._bag_offsets[: windows * len(self.convs)]

    def reference_logit(self) -> torch.Tensor:
        """F(all-padding reference) = fc.bias + sum_k ReLU(p0_k) . w_k, the same for every review;
        computed again only when a p0 or the linear layer changes (their versions)."""
        fc = self.model.fc
        key = (fc.weight._version, fc.bias._version, fc.weight.data_ptr(), *(c.p0._version for c in self.convs))
        if self._reference is None or self._reference[0] != key:
            ref = fc.bias[0]
            for conv, w_out in zip(self.convs, fc.weight[0].split(self.n_filters)):
                ref = ref + F.relu(conv.p0) @ w_out
            self._reference = (key, ref)
        return self._reference[1]


def attach(model: SentimentCNN) -> TapEngine:
    """Build ``model``'s engine and keep it on the model as ``model.tap_engine``, where
    ``engine_for`` and ``layer_ig`` find it when a caller passes none."""
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
