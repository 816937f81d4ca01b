"""The sentiment CNN of Captum's IMDB tutorial, as pure torch, plus its pickle-free artifacts.

Architecture (Kim-style CNN): embedding -> Conv2d(1, F, (fs, E)) per filter size -> ReLU -> max over
time -> concat -> dropout -> Linear(len(fs) * F, 1). One logit; sigmoid(logit) = P(positive).

One deliberate addition to the tutorial: ``forward`` takes the per-review length. Windows that
reach past a review's own (min_len-padded) length are excluded from the max-pool, so a review gives
the same logit whether it is scored alone or padded to the longest review of a batch. Without it,
ReLU(bias) of all-padding windows could win the max-pool and batching would change answers.

Serving evaluates the same network through per-token tables (``token_taps``, ``predict_logits``):
no convolution at inference. ``forward`` stays the tutorial's computation, for training, for
Captum, and as the reference the tables are tested against.
"""

from __future__ import annotations

import bisect
import json
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model_config.json"


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    pad_idx: int = 1
    embedding_dim: int = 100
    n_filters: int = 100
    filter_sizes: tuple[int, ...] = (3, 4, 5)
    output_dim: int = 1
    dropout: float = 0.5

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        # model_config.json also records the text pipeline and the calibration: not network fields.
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["filter_sizes"] = tuple(d["filter_sizes"])
        return cls(**d)


class SentimentCNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        e, f = config.embedding_dim, config.n_filters
        self.embedding = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_idx)
        self.convs = nn.ModuleList(nn.Conv2d(1, f, kernel_size=(fs, e)) for fs in config.filter_sizes)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(len(config.filter_sizes) * f, config.output_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> logits [B]. ``lengths`` [B] is each row's padded length (>= largest filter)."""
        return self.forward_embedded(self.embedding(ids), lengths)

    def forward_embedded(self, emb: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """emb [B, T, E] -> logits [B]; the part of the network after the embedding layer."""
        x = emb.transpose(1, 2)  # [B, E, T]
        pooled = []
        for conv in self.convs:
            h = F.relu(F.conv1d(x, conv1d_weight(conv), conv.bias))  # [B, F, T - fs + 1]
            if lengths is not None:
                h = h * window_mask(lengths, conv.kernel_size[0], h.shape[2]).unsqueeze(1).to(h.dtype)
            pooled.append(h.amax(dim=2))  # [B, F]
        cat = self.dropout(torch.cat(pooled, dim=1))  # [B, len(fs) * F]
        return self.fc(cat).squeeze(1)  # [B]


def conv1d_weight(conv: nn.Conv2d) -> torch.Tensor:
    """[F, E, fs]: Conv2d(1, F, (fs, E)) over [B, 1, T, E] is Conv1d over [B, E, T] with this weight.

    The tutorial's Conv2d parameters (and state-dict layout) are kept; the Conv1d form computes the
    same sums and was 2-3x faster on CPU (tests compare both forms).
    """
    return conv.weight.squeeze(1).transpose(1, 2)


def window_mask(lengths: torch.Tensor, filter_size: int, n_windows: int) -> torch.Tensor:
    """[B, n_windows] bool: window t (tokens t..t+fs-1) lies inside the row's length.

    Multiplying ReLU outputs by this mask equals dropping those windows from the max, since the
    max of ReLU outputs over the (never empty) valid windows is >= 0 anyway.
    """
    t = torch.arange(n_windows, device=lengths.device)
    return (t.unsqueeze(0) + filter_size) <= lengths.unsqueeze(1)


@dataclass(frozen=True)
class TokenTaps:
    """One convolution as per-vocabulary-token projections: ``table[j * V + v, f]`` is
    (e_v - e_pad) . W[f, :, j], tap j of filter f on token v's embedding minus the padding
    token's. A window's pre-activation is then p0 plus the sum of fs table rows, one per token."""

    table: torch.Tensor  # [fs * V, F]
    p0: torch.Tensor  # [F] pre-activation of an all-padding window (bias included)
    fs: int


_TAPS: weakref.WeakKeyDictionary[SentimentCNN, tuple[tuple, list[TokenTaps]]] = weakref.WeakKeyDictionary()


def token_taps(model: SentimentCNN) -> list[TokenTaps]:
    """The tap tables of each convolution, built once per model and again if its weights change.

    Why tables: the convolutions only ever see the vocabulary's V token vectors, so projecting them
    once (12 x V x F floats: 120 MB for the shipped model) turns every later convolution into fs
    row lookups per window -- one ``embedding_bag`` -- for predictions and Layer IG alike (on CPU
    about 10x cheaper than the convolution at one thread). Windows with the same tokens also sum
    the same rows in the same order, so they get bit-identical values, which a convolution's
    vectorised sums do not guarantee.
    """
    params = [model.embedding.weight] + [p for conv in model.convs for p in (conv.weight, conv.bias)]
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cached = _TAPS.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with torch.no_grad():
        emb = model.embedding.weight  # [V, E]
        emb_pad = emb[model.embedding.padding_idx]  # [E]
        taps = []
        for conv in model.convs:
            w = conv1d_weight(conv)  # [F, E, fs]
            table = torch.einsum("ve,fej->jvf", emb - emb_pad, w).reshape(-1, w.shape[0]).contiguous()
            taps.append(TokenTaps(table, conv.bias + torch.einsum("fej,e->f", w, emb_pad), w.shape[2]))
    _TAPS[model] = (stamp, taps)
    return taps


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


@torch.no_grad()
def predict_logits(model: SentimentCNN, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ids [B, T] -> logits [B] as ``model(ids, lengths)`` in eval mode, through the tap tables.

    ReLU is monotonic and p0 is the same for every window, so max_t ReLU(p0 + A_t) = ReLU(p0 + max_t A_t).
    Rows go in groups of lengths at most 2x apart, each padded only to its own longest: IMDB
    reviews run from a few tokens to 512, and padding all to the longest tripled the work.
    """
    order = torch.argsort(lengths)
    sorted_lengths = lengths[order].tolist()  # one device sync
    logits = torch.empty(len(sorted_lengths), dtype=model.fc.weight.dtype, device=ids.device)
    start = 0
    while start < len(sorted_lengths):
        end = bisect.bisect_right(sorted_lengths, 2 * sorted_lengths[start], lo=start)
        rows = order[start:end]
        logits[rows] = _logits(model, ids[rows, : sorted_lengths[end - 1]], lengths[rows], sorted_lengths[start])
        start = end
    return logits


def _logits(model: SentimentCNN, ids: torch.Tensor, lengths: torch.Tensor, shortest: int) -> torch.Tensor:
    logits = model.fc.bias[0]
    for taps, w_out in zip(token_taps(model), model.fc.weight[0].split(model.config.n_filters)):
        _, a = window_sums(taps, ids, lengths, shortest)  # [B, T', F]
        logits = logits + F.relu(taps.p0 + a.amax(dim=1)) @ w_out  # [B]
    return logits


def save_artifacts(model: SentimentCNN, directory: Path, half_embedding: bool = True) -> None:
    """Write weights (safetensors, no pickle) and the config beside them.

    The embedding is ~98% of the parameters; storing it in float16 halves the committed size.
    It is up-cast to float32 at load, so inference always runs in float32.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half_embedding:
        state["embedding.weight"] = state["embedding.weight"].half()
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")


def load_model(directory: Path, device: str | torch.device = "cpu") -> SentimentCNN:
    """Build the model from its config and load safetensors weights (float32, eval mode)."""
    directory = Path(directory)
    config = ModelConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    model = SentimentCNN(config)
    model.load_state_dict(state)
    return model.to(device).eval()
