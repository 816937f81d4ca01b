"""Layer IG: the fast engine against Captum, completeness, adaptivity and fallbacks."""

from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from handler.attribution import (
    TIES,
    IGSettings,
    _row_cost,
    chunk_plan,
    layer_ig,
    prepare_quadrature,
    quadrature,
    step_counts,
)
from handler.model import ModelConfig, SentimentCNN, load_model
from handler.text import Vocab, encode, tokenize
from tests.helpers import SHIPPED


def _random_batch(seed=0, vocab=300, lengths=(40, 31, 7, 12, 25, 9, 3)):
    g = torch.Generator().manual_seed(seed)
    width = max(max(lengths), 7)
    ids = torch.randint(2, vocab, (len(lengths), width), generator=g)
    for row, n in enumerate(lengths):
        ids[row, n:] = 1
    return ids, torch.tensor([max(n, 7) for n in lengths])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SentimentCNN(ModelConfig(vocab_size=300)).eval()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle"])
def test_fast_engine_equals_captum_at_equal_steps_on_random_inputs(model, method):
    """In float64, so Captum's own rounding cannot flip near-tied max-pool winners.

    (In float32, two windows whose A values differ by ~1e-6 can swap at the smallest alpha
    node inside Captum's interpolated forward; the fast engine takes the true argmax.)
    """
    double = SentimentCNN(model.config).double().eval()
    double.load_state_dict(model.state_dict())
    for seed in range(3):
        ids, lengths = _random_batch(seed)
        fast = layer_ig(double, ids, lengths, IGSettings(engine="fast", method=method, n_steps=32))
        ref = layer_ig(double, ids, lengths, IGSettings(engine="captum", method=method, n_steps=32))
        assert fast.attributions.dtype == torch.float64
        assert _rel(fast.attributions, ref.attributions) < 1e-7
        assert torch.allclose(fast.delta, ref.delta, atol=1e-7)
        assert torch.allclose(fast.logits, ref.logits, atol=1e-12)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left"])
def test_repeated_phrases_get_captums_attribution_per_token(model, method):
    """Repeated phrases make identical windows that tie in the max-pool. Which copy wins is
    decided by the last bit of the convolution (vectorised sums differ by ~1e-15 between equal
    windows), in Captum as in any engine, so positions cannot be compared -- but every copy
    holds the same tokens, so the attribution summed per token id is the same whichever wins."""
    double = SentimentCNN(model.config).double().eval()
    double.load_state_dict(model.state_dict())
    ids = torch.tensor([[5, 6, 7] * 8, [9] * 20 + [1] * 4, [5, 6, 7, 8] * 3 + [2] * 12])  # [3, 24]
    lengths = torch.tensor([24, 20, 24])
    fast = layer_ig(double, ids, lengths, IGSettings(engine="fast", method=method, n_steps=16))
    ref = layer_ig(double, ids, lengths, IGSettings(engine="captum", method=method, n_steps=16))

    def per_token(attr):  # [B, vocab]
        return torch.zeros(len(ids), 300, dtype=attr.dtype).scatter_add_(1, ids, attr)

    assert _rel(per_token(fast.attributions), per_token(ref.attributions)) < 1e-7
    assert torch.allclose(fast.delta, ref.delta, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_copies_of_a_repeated_phrase_get_the_same_attributions(model, dtype):
    """Exact ties split evenly (as amax's backward does in exact arithmetic), whatever the last
    bit of a convolution would say: interior copies of a repeated phrase are indistinguishable.
    (Picking winners with ``a == max`` on conv1d outputs, interior copies of "10 292" differed by
    54% of the largest attribution in float64: the conv's sums differ in the last bit between
    equal windows, so one arbitrary copy took the whole share.)"""
    m = SentimentCNN(model.config).to(dtype).eval()
    m.load_state_dict(model.state_dict())
    phrase = layer_ig(m, torch.tensor([[10, 292] * 11]), torch.tensor([22]), IGSettings(method="exact")).attributions[0]
    scale = float(phrase.abs().max())
    interior = phrase[4:18].view(7, 2)  # copies whose tokens every window size fully covers
    assert torch.allclose(interior, interior[:1].expand_as(interior), rtol=0, atol=1e-6 * scale)
    assert not torch.allclose(phrase[0:2], phrase[4:6], rtol=0, atol=1e-3 * scale)  # the first copy sees fewer windows
    ids = torch.tensor([[20, 21] + [11, 12, 13, 14, 15, 16] * 5 + [22, 23, 24, 25]])  # [1, 36]
    out = layer_ig(m, ids, torch.tensor([36]), IGSettings(method="exact")).attributions[0]
    assert torch.allclose(out[8:14], out[14:20], rtol=0, atol=1e-6 * float(out.abs().max()))


def test_fast_engine_equals_captum_on_the_shipped_model_and_real_reviews():
    model, vocab = load_model(SHIPPED), Vocab.load(SHIPPED)
    reviews = [
        "It was a fantastic performance !",
        "That is a terrible movie.",
        "A slow start, but the second half is gripping and the cast is wonderful; I'd watch it again.",
    ]
    batch = encode(tokenize(reviews), vocab)
    fast = layer_ig(model, batch.ids, batch.lengths, IGSettings(n_steps=50))
    ref = layer_ig(model, batch.ids, batch.lengths, IGSettings(engine="captum", n_steps=50))
    assert _rel(fast.attributions, ref.attributions) < 1e-5


def test_exact_attributions_are_complete(model):
    """sum(attributions) = F(input) - F(reference), both computed by a plain forward pass."""
    ids, lengths = _random_batch(1)
    out = layer_ig(model, ids, lengths, IGSettings(method="exact"))
    with torch.no_grad():
        f_x = model(ids, lengths)
        f_ref = model(torch.ones_like(ids), lengths)
    gap = f_x - f_ref
    assert torch.allclose(out.attributions.sum(1), gap, atol=1e-5 * (1 + gap.abs().max()))
    assert (out.delta.abs() <= 1e-5 * (1 + gap.abs())).all()
    assert out.n_steps.tolist() == [0] * len(lengths)


def test_captum_converges_to_the_exact_integral_as_steps_grow(model):
    ids, lengths = _random_batch(2)
    exact = layer_ig(model, ids, lengths, IGSettings(method="exact")).attributions
    errors = [
        _rel(
            layer_ig(model, ids, lengths, IGSettings(engine="captum", method="riemann_middle", n_steps=n)).attributions,
            exact,
        )
        for n in (8, 64, 512)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3


def test_padding_positions_get_zero_attribution(model):
    ids, lengths = _random_batch(3)
    out = layer_ig(model, ids, lengths, IGSettings())
    assert (out.attributions[ids == 1] == 0).all()


def test_adaptive_mode_raises_steps_until_relative_delta_is_under_tolerance(model):
    ids, lengths = _random_batch(4)
    fixed = layer_ig(model, ids, lengths, IGSettings(n_steps=4))
    adaptive = layer_ig(model, ids, lengths, IGSettings(n_steps=4, adaptive=True, rtol=1e-3, max_steps=1024))
    assert (fixed.relative_delta() > 1e-3).any()
    ok = (adaptive.relative_delta() <= 1e-3) | (adaptive.delta.abs() <= 1e-6)
    assert ok.all()
    assert (adaptive.n_steps >= 4).all() and (adaptive.n_steps > 4).any()
    # rows that needed more steps equal a fixed run at the steps they report
    row = int(adaptive.n_steps.argmax())
    again = layer_ig(
        model,
        ids[row : row + 1],
        lengths[row : row + 1],
        IGSettings(n_steps=int(adaptive.n_steps[row]), max_steps=1024),
    )
    width = int(lengths[row])
    assert torch.allclose(adaptive.attributions[row, :width], again.attributions[0, :width], atol=1e-6)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_adaptive_steps_are_chosen_as_captums_own_deltas_would_choose_them(model, method):
    """The fast engine picks each review's steps from [B, F] quantities before its backward pass;
    Captum's engine reruns with doubled steps. In float64 both pick the same steps and attributions."""
    double = SentimentCNN(model.config).double().eval()
    double.load_state_dict(model.state_dict())
    ids, lengths = _random_batch(8)
    settings = IGSettings(method=method, n_steps=4, adaptive=True, rtol=1e-2, max_steps=512)
    fast = layer_ig(double, ids, lengths, settings)
    ref = layer_ig(double, ids, lengths, replace(settings, engine="captum"))
    assert fast.n_steps.tolist() == ref.n_steps.tolist() and len(set(fast.n_steps.tolist())) > 1
    assert _rel(fast.attributions, ref.attributions) < 1e-7


def test_results_do_not_depend_on_chunking_or_batch_mates(model):
    ids, lengths = _random_batch(5)
    whole = layer_ig(model, ids, lengths, IGSettings())
    tiny_chunks = layer_ig(model, ids, lengths, IGSettings(chunk_elements=1))
    assert torch.allclose(whole.attributions, tiny_chunks.attributions, atol=1e-6)
    alone = layer_ig(model, ids[2:3, :7], lengths[2:3], IGSettings())
    assert torch.allclose(whole.attributions[2, :7], alone.attributions[0], atol=1e-6)


def test_captum_engine_works_under_inference_mode(model):
    ids, lengths = _random_batch(6)
    with torch.inference_mode():
        out = layer_ig(model, ids, lengths, IGSettings(engine="captum", n_steps=8))
    assert out.attributions.shape == ids.shape and torch.isfinite(out.attributions).all()


def test_other_models_fall_back_to_captum():
    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.embedding = inner, inner.embedding

        def forward(self, ids, lengths):
            return self.inner(ids, lengths) * 2.0

    torch.manual_seed(0)
    wrapped = Wrapped(SentimentCNN(ModelConfig(vocab_size=300))).eval()
    ids, lengths = _random_batch(7)
    out = layer_ig(wrapped, ids, lengths, IGSettings(method="exact", n_steps=64))
    assert out.engine == "captum" and out.method == "gausslegendre"
    assert out.ties == "model"  # its own pooling: the tie rule cannot reach into another model
    exact = layer_ig(wrapped.inner, ids, lengths, IGSettings(method="exact")).attributions
    assert _rel(out.attributions, 2.0 * exact) < 0.05


def test_quadrature_rule_is_cached_and_matches_captum():
    from captum.attr._utils.approximation_methods import approximation_parameters

    alphas, weights = quadrature("gausslegendre", 16)
    assert quadrature("gausslegendre", 16) is quadrature("gausslegendre", 16)
    step_sizes, alpha_fn = approximation_parameters("gausslegendre")
    assert list(alphas) == list(alpha_fn(16)) and list(weights) == list(step_sizes(16))
    # the fast engine finds a channel's "on" nodes by binary search: nodes must ascend
    for method in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"):
        for n in (2, 3, 50, 1024):
            nodes = quadrature(method, n)[0]
            assert all(x < y for x, y in zip(nodes, nodes[1:])), (method, n)


def test_adaptive_step_counts_double_up_to_the_maximum_and_are_prepared_ahead():
    settings = IGSettings(method="riemann_middle", n_steps=48, adaptive=True, max_steps=300)
    assert step_counts(settings) == [48, 96, 192, 300]
    assert step_counts(replace(settings, adaptive=False)) == [48]
    prepare_quadrature(settings)
    hits = quadrature.cache_info().hits
    for n in (48, 96, 192, 300):
        quadrature("riemann_middle", n)
    assert quadrature.cache_info().hits == hits + 4


def test_settings_reject_unknown_engine_method_and_steps():
    for bad in (
        {"engine": "magic"},
        {"method": "simpson"},
        {"n_steps": 1},
        {"n_steps": 5000},
        {"engine": "captum", "method": "exact"},
    ):
        with pytest.raises(ValueError):
            IGSettings(**bad)


def _planted_batch(seed: int, vocab: int = 300):
    """Random reviews with repeated n-grams planted in them (each copy's windows tie exactly), some
    padded past their length. [6, 48] ids, [6] lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([48, 40, 33, 27, 19, 12])
    ids = torch.randint(2, vocab, (6, 48), generator=g)
    for row, n in enumerate(lengths.tolist()):
        size = int(torch.randint(4, 8, (1,), generator=g))
        phrase = torch.randint(2, vocab, (size,), generator=g)
        copies = 2 + int(n >= 3 * size + 3)
        gap = (n - copies * size) // copies
        for k in range(copies):
            ids[row, k * (size + gap) : k * (size + gap) + size] = phrase
        ids[row, n:] = 1
    return ids, lengths


@pytest.fixture(scope="module")
def double_model(model):
    double = SentimentCNN(model.config).double().eval()
    double.load_state_dict(model.state_dict())
    return double


class _FirstCopysValue(torch.autograd.Function):
    """Forward: each window's output replaced by that of the first window with the same input
    (``index``); backward: the gradient of each window to itself, as the convolution routes it."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return out.gather(2, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _copies_alike(conv, unfold_windows):
    """``conv`` (F.conv1d or F.conv2d, stride 1, no padding) whose windows with bit-identical inputs
    give bit-identical outputs: the first copy's. ``unfold_windows``: input -> [N, n, fs * E]."""

    def wrapped(x, weight, bias=None, *geometry):
        assert all(g in (1, (1, 1), 0, (0, 0)) for g in geometry), geometry  # stride, padding, dilation, groups
        out = conv(x, weight, bias, *geometry)  # [N, F, n] or [N, F, n, 1]
        windows = unfold_windows(x.detach(), weight.shape[2])  # [N, n, fs * E]
        labels = torch.unique(windows.flatten(0, 1), dim=0, return_inverse=True)[1].view(windows.shape[:2])  # [N, n]
        first = (labels.unsqueeze(2) == labels.unsqueeze(1)).int().argmax(dim=2)  # [N, n] the first copy
        index = first.view(first.shape[0], 1, -1, *out.shape[3:]).expand_as(out)
        alike = _FirstCopysValue.apply(out, index)
        # only rounding is removed: copies differ by a few ulps, never by a real amount
        assert float((alike - out).detach().abs().max()) <= 1e-12 * float(out.detach().abs().max())
        return alike

    return wrapped


@contextmanager
def _convolutions_round_copies_alike():
    """The convolutions (F.conv1d of the model's forward, F.conv2d of the tutorial's) with copies of
    a window computed bit-identically, as exact arithmetic gives and the fast engine's tables give by
    construction. Why: a float64 convolution runs as one GEMM per review (slow_conv2d: DGEMM with a
    column per window), and the GEMM does not sum every column in the same order. With oneMKL on an
    AMD EPYC (Zen 4), in a chunk 19 tokens wide (15 windows of 5 tokens) window 12, in the last
    column block, came out 4 ulps above its copies at windows 0 and 6; at 24 tokens wide, no copy
    differed. The max-pool then sees one winner where the copies tie, and the CPU, not the tie
    rule, decides which copy Captum credits. Another CPU's kernels may round copies alike."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "conv1d", _copies_alike(F.conv1d, lambda x, fs: x.unfold(2, fs, 1).transpose(1, 2).flatten(2)))
        patch.setattr(F, "conv2d", _copies_alike(F.conv2d, lambda x, fs: x.squeeze(1).unfold(1, fs, 1).flatten(2)))
        yield  # conv1d's input [N, E, T], conv2d's [N, 1, T, E]


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_trapezoid"])
@pytest.mark.parametrize("ties", ["split", "first"])
def test_each_tie_rule_equals_captum_on_its_pooling_per_token(double_model, ties, method):
    """Float64, repeated n-grams planted: ``split`` equals Captum on the amax model and ``first``
    equals Captum on the tutorial's F.max_pool1d forward, position by position (riemann_left and
    trapezoid also have a node at alpha = 0, where every window ties).

    Which windows tie is the point, so Captum runs with copies of a window convolved to the same
    bits (``_convolutions_round_copies_alike``): otherwise the GEMM's rounding on this CPU, not the
    rule, picks the winner among the copies: all six cases failed so on an AMD EPYC (Zen 4)."""
    for seed in range(2):
        ids, lengths = _planted_batch(seed)
        settings = IGSettings(method=method, n_steps=24, ties=ties)
        fast = layer_ig(double_model, ids, lengths, settings)
        with _convolutions_round_copies_alike():
            ref = layer_ig(double_model, ids, lengths, replace(settings, engine="captum"))
            other = layer_ig(double_model, ids, lengths, replace(settings, engine="captum", ties=TIES[ties == "split"]))
        assert (fast.ties, ref.ties) == (ties, ties)
        assert _rel(fast.attributions, ref.attributions) < 1e-7
        assert torch.allclose(fast.delta, ref.delta, atol=1e-8)
        # the planted ties matter: the other rule's Captum answer is far from this one
        assert _rel(other.attributions, ref.attributions) > 1e-3


def test_tie_rules_give_the_same_totals_and_deltas(double_model):
    """The rules only move credit between identical windows: per review, the sum of attributions,
    delta and logits are the same under both -- for the exact integral and every rule without a
    node at alpha = 0. At alpha = 0 all windows tie, but their tokens differ, so there the rule
    does change the total: by the node's weight (1/n for riemann_left) times a fixed amount."""
    ids, lengths = _planted_batch(3)
    for settings in (
        IGSettings(method="exact"),
        IGSettings(n_steps=16),
        IGSettings(method="riemann_right", n_steps=16),
    ):
        split = layer_ig(double_model, ids, lengths, settings)
        first = layer_ig(double_model, ids, lengths, replace(settings, ties="first"))
        assert _rel(split.attributions, first.attributions) > 1e-3
        assert torch.allclose(split.attributions.sum(1), first.attributions.sum(1), rtol=0, atol=1e-12)
        assert torch.allclose(split.delta, first.delta, rtol=0, atol=1e-12)
        assert torch.equal(split.logits, first.logits)
    gaps = []
    for n in (16, 32):
        settings = IGSettings(method="riemann_left", n_steps=n)
        split = layer_ig(double_model, ids, lengths, settings).attributions.sum(1)
        gaps.append(split - layer_ig(double_model, ids, lengths, replace(settings, ties="first")).attributions.sum(1))
    assert (gaps[0].abs() > 1e-6).all() and torch.allclose(gaps[0], 2 * gaps[1], rtol=1e-9, atol=0)


def test_shipped_model_review_with_a_repeated_winning_ngram_follows_each_tie_rule():
    """The issue's example: spaCy splits "<pad>" into "<", "pad", ">", so the 3-gram repeats and ties
    for some channel. The rules differ on it, and each equals its Captum counterpart (float64)."""
    model, vocab = load_model(SHIPPED).double(), Vocab.load(SHIPPED)
    batch = encode(tokenize(["<pad> <unk> great <pad>"]), vocab)
    answers = {}
    for ties in TIES:
        settings = IGSettings(method="gausslegendre", n_steps=64, ties=ties)
        fast = layer_ig(model, batch.ids, batch.lengths, settings)
        ref = layer_ig(model, batch.ids, batch.lengths, replace(settings, engine="captum"))
        assert _rel(fast.attributions, ref.attributions) < 1e-7
        answers[ties] = fast.attributions
    assert _rel(answers["first"], answers["split"]) > 1e-2


def test_explanations_run_in_length_groups_at_most_2x_apart(model):
    """The chunk plan: every row once, each chunk padded to its own longest row, which is at most
    twice its shortest, and within the memory budget -- here 8 reviews of 7 to 512 tokens, which
    the budget alone ran as one [8, 512] chunk."""
    lengths = torch.tensor([512, 7, 300, 40, 13, 160, 90, 21])
    order, chunks = chunk_plan(model, lengths, IGSettings())
    assert sorted(r for s, e, _ in chunks for r in order[s:e].tolist()) == list(range(8))
    for start, end, width in chunks:
        rows = lengths[order[start:end]]
        assert width == int(rows.max()) <= 2 * int(rows.min())
    assert [int(w) for _, _, w in chunks] == [13, 40, 160, 512]  # 7 13 | 21 40 | 90 160 | 300 512
    budget = IGSettings(chunk_elements=600_000)
    for start, end, width in chunk_plan(model, lengths, budget)[1]:
        assert end - start == 1 or (end - start) * _row_cost(model, width) <= budget.chunk_elements


def test_length_groups_give_the_same_answers_as_one_review_at_a_time(model):
    g = torch.Generator().manual_seed(9)
    lengths = torch.tensor([7, 9, 15, 33, 64, 120, 250, 31])
    ids = torch.randint(2, 300, (8, 250), generator=g).masked_fill(torch.arange(250) >= lengths.unsqueeze(1), 1)
    for settings in (IGSettings(method="exact"), IGSettings(n_steps=8, adaptive=True, ties="first")):
        batched = layer_ig(model, ids, lengths, settings)
        for i, n in enumerate(lengths.tolist()):
            alone = layer_ig(model, ids[i : i + 1, :n], lengths[i : i + 1], settings)
            assert torch.allclose(batched.attributions[i, :n], alone.attributions[0], rtol=0, atol=1e-6)
            assert batched.n_steps[i] == alone.n_steps[0] and (batched.attributions[i, n:] == 0).all()
