"""The shared text pipeline: tokenizing, vocabulary and padding."""

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handler.long_runs import MAX_RUN, MAX_STRIPS
from handler.text import _BREAK, PAD, UNK, Vocab, clean, encode, spacy_tokenizer, tokenize

PUNCT = "!?()[]\"'.,;:*-/&"
STRIPPED = '!?()"😀'  # symbols spaCy strips one by one: quadratic on its own
# The symbols the 50,000 IMDB reviews repeat at a word's ends. Contrived contexts of others can
# differ (14 ``+`` then ``0!!!``: spaCy keeps ``+0`` only with all the copies on the word).
REPEATABLE = '!?*_=.-()"😀🎬'
# Any code point, lone surrogates included (a JSON body may escape one), weighted to punctuation.
ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from(PUNCT + " \n"))


def test_tokenize_lowercases_splits_punctuation_and_drops_html_breaks():
    assert tokenize(["It was a FANTASTIC performance!<br /><br />I've  seen it."]) == [
        ["it", "was", "a", "fantastic", "performance", "!", "i", "'ve", "seen", "it", "."]
    ]


def test_tokenize_matches_spacy_blank_english_tokenizer():
    import spacy

    text = "Don't miss it: 10/10, (really) -- e-mail me@x.org"
    assert tokenize([text])[0] == [t.text for t in spacy.blank("en").tokenizer(text.lower()) if not t.is_space]


def _vocab():
    return Vocab([UNK, PAD, "good", "movie", "bad"])


def test_short_review_is_padded_to_min_len():
    batch = encode([["good", "movie"]], _vocab(), min_len=7)
    assert batch.ids.tolist() == [[2, 3, 1, 1, 1, 1, 1]]
    assert batch.lengths.tolist() == [7]
    assert batch.tokens == [["good", "movie"]]


def test_batch_is_padded_to_longest_row_and_keeps_each_rows_length():
    batch = encode([["good"] * 10, ["bad"], []], _vocab(), min_len=7)
    assert batch.ids.shape == (3, 10)
    assert batch.lengths.tolist() == [10, 7, 7]
    assert (batch.ids[1, 1:] == 1).all()


def test_empty_after_tokenizing_gives_an_all_padding_row():
    assert tokenize(["<br /><br />   "]) == [[]]
    batch = encode([[]], _vocab())
    assert batch.ids.tolist() == [[1] * 7] and batch.tokens == [[]] and batch.n_unknown == [0]


def test_unknown_words_map_to_unk_and_are_counted():
    batch = encode([["good", "zyzzyva", "movie", "qwerty"]], _vocab())
    assert batch.ids[0, :4].tolist() == [2, 0, 3, 0]
    assert batch.n_unknown == [2]


def test_very_long_review_is_truncated_and_flagged():
    batch = encode([["good"] * 5000, ["bad"] * 3], _vocab(), max_tokens=512)
    assert batch.ids.shape == (2, 512)
    assert batch.truncated == [True, False]
    assert len(batch.tokens[0]) == 512


def test_vocab_save_load_round_trip(tmp_path):
    vocab = Vocab.build([["b", "a", "b", "c", "c", "c"]], max_size=10)
    assert vocab.itos == [UNK, PAD, "c", "b", "a"]  # by frequency, ties alphabetical
    vocab.save(tmp_path)
    loaded = Vocab.load(tmp_path)
    assert loaded.itos == vocab.itos and loaded.lookup(["c", "zzz"]) == [2, 0]


def test_vocab_build_prunes_by_size_and_frequency():
    vocab = Vocab.build([["a"] * 3 + ["b"] * 2 + ["c"]], max_size=3, min_freq=2)
    assert vocab.itos == [UNK, PAD, "a"]
    assert len(Vocab.build([["a"] * 3 + ["b"] * 2 + ["c"]], max_size=10, min_freq=2)) == 4


def test_encode_returns_long_tensors():
    batch = encode([["good"]], _vocab())
    assert batch.ids.dtype == torch.long and batch.lengths.dtype == torch.long


def _spacy_alone(text: str) -> list[str]:
    """spaCy on the text as tokenize cleans it, without the bound on runs."""
    return [t.text for t in spacy_tokenizer()(_BREAK.sub(" ", text).lower()) if not t.is_space]


class _CountingTokenizer:
    """spaCy's tokenizer with its prefix and suffix searches wrapped to add up the characters they
    scan: the work of spaCy's affix loop, quadratic in a run's length when it strips affix after
    affix (tokens are unchanged; this instance only measures)."""

    def __init__(self):
        import spacy

        self.tokenizer = spacy.blank("en").tokenizer
        self.scanned = 0
        for name in ("prefix_search", "suffix_search"):
            search = getattr(self.tokenizer, name)
            setattr(self.tokenizer, name, lambda text, search=search: self._count(text, search))

    def _count(self, text: str, search):
        self.scanned += len(text)
        return search(text)

    def work(self, text: str) -> int:
        self.scanned = 0
        self.tokenizer(text)
        return self.scanned


_COUNTER = _CountingTokenizer()
WORK_PER_CHAR = 4 * (MAX_STRIPS + 2)  # two searches per strip, +2 per run; lower-casing may double a character


def _spacy_work(text: str) -> int:
    """Characters spaCy's affix searches scan on the text as ``tokenize`` cleans it."""
    return _COUNTER.work(clean(text))


@settings(max_examples=300, deadline=None)
@given(st.text(ANY_CHAR, max_size=400))
def test_tokenize_never_raises_and_gives_non_space_utf8_tokens(text):
    tokens = tokenize([text])[0]
    assert all(t and not t.isspace() for t in tokens)
    "".join(tokens).encode("utf-8")  # no surrogate survives


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(ANY_CHAR, max_size=300), st.text(st.sampled_from(STRIPPED), min_size=200, max_size=400)))
def test_tokenizing_cost_is_linear_in_the_text(text):
    assert _spacy_work(text) <= WORK_PER_CHAR * len(text)


# Words of at most 40 characters (80 after lower-casing: İ -> i + U+0307), at most MAX_STRIPS of
# them symbols: runs that reach spaCy unchanged.
PLAIN_WORD = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(PUNCT)), max_size=MAX_RUN // 2).filter(
    lambda w: sum(not c.isalnum() for c in w) <= MAX_STRIPS
)


@settings(max_examples=200, deadline=None)
@given(st.lists(PLAIN_WORD))
def test_runs_within_the_bounds_keep_spacys_tokens(words):
    text = " ".join(words)
    assert tokenize([text])[0] == _spacy_alone(text)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(REPEATABLE),
    st.integers(0, MAX_RUN // 4),  # with the word, at most MAX_RUN characters
    PLAIN_WORD.filter(lambda w: w[:1].isalnum() and w[-1:].isalnum() and not any(c.isspace() for c in w)),
    st.sampled_from(REPEATABLE),
    st.integers(0, MAX_RUN // 4),  # with the word, at most MAX_RUN characters
)
def test_repeated_symbols_at_a_words_ends_keep_spacys_tokens(left, n_left, word, right, n_right):
    """A word between long stretches of one symbol, as reviews have them (``wow!!!!!!``,
    ``*****spoilers*****``): spread out where spaCy strips them one by one, else left alone."""
    text = left * n_left + word + right * n_right
    assert tokenize([text])[0] == _spacy_alone(text)


def _random_run(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


_RNG = random.Random(0)
PATHOLOGICAL = {
    "bang": "!" * 100_000,
    "paren": "(" * 100_000,
    "emoji": "😀🎬👍" * 33_333,
    "alternating": "!?" * 50_000,
    "letters": "a" * 100_000,
    "letter_bang": "a!" * 50_000,
    "quotes": "'" * 100_000,
    "smileys": ":)" * 50_000,
    # distinct runs (spaCy caches a run it has seen): random symbols, and words wrapped in symbols
    "symbol_runs": " ".join(_random_run(_RNG, PUNCT, MAX_RUN) for _ in range(100_000 // (MAX_RUN + 1))),
    "emoji_runs": " ".join(_random_run(_RNG, "😀🎬👍💥🔥", 40) for _ in range(100_000 // 41)),
    "symbols_around_words": " ".join(
        _random_run(_RNG, PUNCT, 9) + f"w{k}" + _random_run(_RNG, PUNCT, 9) for k in range(100_000 // 25)
    ),
}


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_pathological_100k_character_inputs_cost_linear_work(name):
    text = PATHOLOGICAL[name]
    assert _spacy_work(text) <= WORK_PER_CHAR * len(text)  # spaCy alone: up to len(text) ** 2 / 2
    assert tokenize([text])[0]


def test_long_runs_are_cut_into_words_symbols_and_stretches_spacy_keeps_whole():
    text = "so " + "good!" * 20 + " " + "!" * 90 + " " + "." * 200
    assert tokenize([text])[0] == ["so"] + ["good", "!"] * 20 + ["!"] * 90 + ["." * 200]
    assert tokenize(["!" * 90])[0] == _spacy_alone("!" * 90)  # spaCy splits a run of ! the same way


@pytest.mark.parametrize(
    "text",
    [
        "wow!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        "*" * 30 + "spoilers" + "*" * 30,
        "so sad:" + "(" * 20 + " happy:" + ")" * 20,  # :( keeps its context (ATTACHED)
        "f*****g b*****ds",
        "spoiler" + "=" * 40 + " a" + "+" * 12 + " 1" + "-" * 30,
        '(((((((((((very))))))))))) """""quoted""""" ',
    ],
)
def test_spread_stretches_of_symbols_keep_spacys_tokens(text):
    assert tokenize([text])[0] == _spacy_alone(text)


def test_lone_surrogates_become_replacement_characters_and_pairs_are_joined():
    assert tokenize(["good \ud800 movie"]) == [["good", "\ufffd", "movie"]]
    assert tokenize(["good \ud83d\ude00 movie"]) == tokenize(["good \U0001f600 movie"])


# --- memory (issue 20) and the array path (issue 18) ---------------------------------------------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _unique_words(rng: random.Random, n: int) -> list[str]:
    letters = rng.choices("abcdefghijklmnopqrstuvwxyz", k=10 * n)
    return ["".join(letters[i : i + 10]) for i in range(0, 10 * n, 10)]


def test_200k_unseen_words_leave_the_string_store_and_rss_where_they_were():
    """spaCy kept every new string (and a lexeme) forever: 200,000 random words grew the store by
    200,000 and RSS by ~90 MB. Tokenizing runs in spaCy's memory zone now: nothing stays."""
    rng = random.Random(0)
    tokenize([" ".join(_unique_words(rng, 100)) for _ in range(200)])  # the allocator's first pools
    strings, rss = len(spacy_tokenizer().vocab.strings), _rss_mb()
    for _ in range(20):  # 20 batches of 100 reviews of 100 unseen words
        texts = [" ".join(_unique_words(rng, 100)) for _ in range(100)]
        assert [len(t) for t in tokenize(texts)] == [100] * 100
    grown_strings, grown_rss = len(spacy_tokenizer().vocab.strings) - strings, _rss_mb() - rss
    assert grown_strings < 100, f"the string store grew by {grown_strings}"
    assert grown_rss < 25, f"RSS grew by {grown_rss:.0f} MB"


def test_after_rebuild_after_unseen_words_the_tokenizer_is_rebuilt_warm_with_the_same_tokens(monkeypatch):
    """spaCy's hash tables keep a tombstone per freed string and double when they fill: the
    tokenizer is rebuilt after REBUILD_AFTER unseen words, warmed again, with the same tokens."""
    import handler.text as text

    text.warm_tokenizer(["zzvocabword", "other"])
    expected = tokenize(["Zzvocabword, other: !!!!!wow!!!!! 10/10"])
    monkeypatch.setattr(text, "REBUILD_AFTER", 1_000)
    first = text.spacy_nlp()
    tokenize([" ".join(_unique_words(random.Random(1), 2_000))])
    tokenize(["next request"])  # the rebuild happens before the zone after the one that passed the bound
    assert text.spacy_nlp() is not first and text._unseen < 1_000
    assert hash(("zzvocabword", "other")) in text._warmed  # warmed again
    assert tokenize(["Zzvocabword, other: !!!!!wow!!!!! 10/10"]) == expected


def test_tokens_carry_spacys_ids_and_encode_gives_the_ids_of_lookup():
    # "case", "det" and "mark" are among the strings spaCy numbers as symbols, not by hash
    texts = ["The case, the det and the MARK of a great movie!", "", "unknownwordxyz " * 600, "good"]
    tokens = tokenize(texts)
    vocab = Vocab([UNK, PAD, "the", "case", "det", "mark", "movie", "!", "good", ","])
    assert all(len(t.orths) == len(t) for t in tokens)
    fast, plain = encode(tokens, vocab, 7, 512), encode([list(t) for t in tokens], vocab, 7, 512)
    assert torch.equal(fast.ids, plain.ids) and torch.equal(fast.lengths, plain.lengths)
    assert (fast.tokens, fast.truncated, fast.n_unknown) == (plain.tokens, plain.truncated, plain.n_unknown)
    assert fast.ids[0, :4].tolist() == [2, 3, 9, 2] and fast.truncated == [False, False, True, False]


def test_encode_of_a_changed_token_list_falls_back_to_lookup():
    tokens = tokenize(["good movie"])[0]
    tokens.append("!")  # the spaCy ids no longer match the list
    assert encode([tokens], Vocab([UNK, PAD, "good", "movie", "!"])).ids[0, :3].tolist() == [2, 3, 4]


@settings(max_examples=200, deadline=None)
@given(st.lists(PLAIN_WORD))
def test_tokens_equal_an_untouched_spacy_blank_english(words):
    """The served tokenizer computes only the lexical attribute it reads (IS_SPACE): tokens must
    still be those of a spacy.blank("en") nobody touched."""
    text = " ".join(words)
    assert tokenize([text])[0] == [t.text for t in _PRISTINE(clean(text)) if not t.is_space]


def _pristine_tokenizer():
    import spacy

    return spacy.blank("en").tokenizer


_PRISTINE = _pristine_tokenizer()

# --- the replies' JSON (handler.reply_json.compact_json) -----------------------------------

JSON_FLOATS = st.one_of(st.floats(), st.floats(-1e-3, 1e-3), st.floats(width=32))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), JSON_FLOATS, st.text(ANY_CHAR)),
    lambda inner: st.one_of(
        st.lists(inner), st.lists(JSON_FLOATS), st.lists(st.text(ANY_CHAR)), st.dictionaries(st.text(ANY_CHAR), inner)
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES)
def test_the_replies_json_is_json_dumps_byte_for_byte(value):
    import json

    from handler.reply_json import compact_json

    assert compact_json(value) == json.dumps(value, separators=(",", ":"))


def test_the_orth_hash_table_gives_lookups_ids_for_every_word_and_unk_for_others():
    from spacy.strings import get_string_id

    rng = random.Random(2)
    words = sorted(set(_unique_words(rng, 5_000) + ["case", "det", "mark", "!", "'s"]))
    vocab = Vocab([UNK, PAD, *words])
    probe = words + _unique_words(rng, 2_000) + [UNK, PAD]
    orths = np.array([get_string_id(w) for w in probe], dtype=np.uint64)
    assert vocab.orth_ids(orths).tolist() == vocab.lookup(probe)
    assert vocab.orth_ids(np.zeros(0, dtype=np.uint64)).tolist() == []
