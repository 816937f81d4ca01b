"""The shared text pipeline: tokenizing, vocabulary and padding."""

import torch
from helpers import tiny_artifacts  # noqa: F401  (puts the repo on sys.path)

from handler.text import PAD, UNK, Vocab, encode, tokenize


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
