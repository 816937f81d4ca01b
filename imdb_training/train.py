"""Train the IMDB sentiment CNN and write the default model's artifacts.

usage: python scripts/train.py [--data PATH] [--out model_store/artifacts] [--epochs 10] [--seed 0]

Trains on the 25,000 IMDB training reviews minus a validation split (early stopping and model
choice use validation only), then reports accuracy on the 25,000 test reviews. Writes
weights.safetensors, model_config.json, vocab.json and metrics.json into --out; model_config.json
also records the text pipeline ("text": handler.text.TextSettings) and the temperature fitted on the
validation split ("calibration", scripts/calibrate.py).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from handler.model import ModelConfig, SentimentCNN, load_model, save_artifacts
from handler.text import TextSettings, Vocab, encode, tokenize
from imdb_training import calibrate
from imdb_training import data as imdb_data
from imdb_training.evaluate import accuracy, dataset_logits, length_buckets

REPO = Path(__file__).resolve().parent.parent


TUTORIAL_SENTENCES = [
    ("It was a fantastic performance !", "pos"),
    ("Best film ever", "pos"),
    ("Such a great show!", "pos"),
    ("It was a horrible movie", "neg"),
    ("I've never watched something as bad", "neg"),
    ("That is a terrible movie.", "neg"),
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ppmi_svd_vectors(token_lists: list[list[str]], vocab: Vocab, dim: int, window: int = 5) -> torch.Tensor:
    """Word vectors [V, dim] from the training text alone: SVD of the positive PMI matrix.

    No pretrained vectors (GloVe etc.) can be downloaded here, and random embeddings overfit;
    PPMI-SVD (Levy & Goldberg, 2014) needs only co-occurrence counts (+-window, weighted 1/distance,
    context distribution smoothed by ^0.75) and one truncated SVD, a minute on 2 cores.
    """
    v = len(vocab)
    sep = -1
    stream = np.fromiter((i for toks in token_lists for i in vocab.lookup(toks) + [sep]), dtype=np.int64)
    counts = None
    for d in range(1, window + 1):
        a, b = stream[:-d], stream[d:]
        ok = (a > vocab.pad_idx) & (b > vocab.pad_idx)  # drops separators, <unk> and <pad>
        idx = torch.from_numpy(np.stack([np.concatenate([a[ok], b[ok]]), np.concatenate([b[ok], a[ok]])]))
        part = torch.sparse_coo_tensor(
            idx, torch.full((idx.shape[1],), 1.0 / d), (v, v), check_invariants=False
        ).coalesce()
        counts = part if counts is None else (counts + part).coalesce()
    i, c = counts.indices(), counts.values().double()
    row = torch.zeros(v, dtype=torch.float64).index_add_(0, i[0], c)
    col = torch.zeros(v, dtype=torch.float64).index_add_(0, i[1], c).pow(0.75)
    pmi = torch.log(c * col.sum() / (row[i[0]] * col[i[1]]))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(i[:, keep], pmi[keep].float(), (v, v), check_invariants=False).coalesce()
    q = min(dim, v)  # a toy vocabulary can be smaller than the embedding
    u, s, _ = torch.svd_lowrank(ppmi, q=q, niter=4)
    vectors = torch.zeros(v, dim)
    vectors[:, :q] = u * s.sqrt()
    vectors[: vocab.pad_idx + 1] = 0.0  # <unk> and <pad> start at zero, as the tutorial does
    return vectors / vectors[2:].std() * 0.5


def word_vectors(model: SentimentCNN, vocab: Vocab, fit_tok: list[list[str]], data_path: Path, args) -> int:
    """Initialise the embedding with PPMI-SVD vectors; returns how many reviews they came from."""
    text = TextSettings()
    unsup = imdb_data.load(data_path, splits=("unsup",))["unsup"].texts if args.unsup else []
    corpus = fit_tok + tokenize(tqdm(unsup, desc="tokenize unsup", mininterval=2), text.lowercase)
    t0 = time.time()
    with torch.no_grad():
        model.embedding.weight.copy_(ppmi_svd_vectors(corpus, vocab, model.config.embedding_dim))
    print(f"PPMI-SVD word vectors from {len(corpus)} training reviews in {time.time() - t0:.0f}s", flush=True)
    return len(corpus)


def train_epoch(model, opt, vocab: Vocab, text: TextSettings, fit_tok, fit_y, rng, args, desc: str) -> dict:
    """One pass over the fitting reviews in shuffled length buckets; loss and accuracy seen."""
    model.train()
    seen = correct = loss_sum = 0
    bar = tqdm(length_buckets(fit_tok, args.batch_size, rng), desc=desc, mininterval=1)
    for idx in bar:
        batch = encode([fit_tok[i] for i in idx], vocab, text.min_len, text.max_tokens)
        if args.word_dropout > 0:  # regulariser: hide random words behind <unk>
            drop = (torch.rand(batch.ids.shape) < args.word_dropout) & (batch.ids != vocab.pad_idx)
            batch.ids[drop] = vocab.unk_idx
        logits = model(batch.ids, batch.lengths)
        loss = F.binary_cross_entropy_with_logits(logits, fit_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(idx)
        loss_sum += loss.item() * len(idx)
        correct += int(((logits > 0).float() == fit_y[idx]).sum())
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen}


def fit(model, vocab: Vocab, text: TextSettings, fit_tok, fit_y, val_tok, val_y, rng, args) -> tuple[float, int, list]:
    """Epochs until validation accuracy stops improving (--patience); keeps the best epoch's weights."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best_acc, best_state, best_epoch, stale = -1.0, None, 0, 0
    history = []
    for epoch in range(1, args.epochs + 1):
        row = {"epoch": epoch, **train_epoch(model, opt, vocab, text, fit_tok, fit_y, rng, args, f"epoch {epoch}")}
        row["val_acc"] = accuracy(dataset_logits(model, val_tok, vocab, text), val_y)
        history.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k} {v}:" for k, v in row.items()), flush=True)
        if row["val_acc"] > best_acc:
            best_acc, best_epoch, stale = row["val_acc"], epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= args.patience:
                break
    model.load_state_dict(best_state)
    return best_acc, best_epoch, history


def train(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    text = TextSettings()  # the one definition of the text pipeline; written beside the weights
    data_path = imdb_data.locate(args.data)
    data = imdb_data.load(data_path)
    train_tok = tokenize(tqdm(data["train"].texts, desc="tokenize train", mininterval=2), text.lowercase)
    test_tok = tokenize(tqdm(data["test"].texts, desc="tokenize test", mininterval=2), text.lowercase)

    rng = random.Random(args.seed)
    val_idx, fit_idx = imdb_data.validation_split(len(train_tok), args.val_size, rng)
    fit_tok = [train_tok[i] for i in fit_idx]
    fit_y = torch.tensor([data["train"].labels[i] for i in fit_idx], dtype=torch.float32)
    val_tok = [train_tok[i] for i in val_idx]
    val_y = [data["train"].labels[i] for i in val_idx]

    vocab = Vocab.build(fit_tok, max_size=args.vocab_size, min_freq=args.min_freq)
    config = ModelConfig(vocab_size=len(vocab), pad_idx=vocab.pad_idx)
    model = SentimentCNN(config)
    n_vector_reviews = word_vectors(model, vocab, fit_tok, data_path, args) if args.word_vectors else 0
    best_acc, best_epoch, history = fit(model, vocab, text, fit_tok, fit_y, val_tok, val_y, rng, args)
    train_seconds = time.time() - started

    out = Path(args.out)
    save_artifacts(model, out, half_embedding=not args.full_precision)
    vocab.save(out)
    shipped = load_model(out)  # what users get: float16 embedding up-cast at load
    test_y = data["test"].labels
    test_logits = dataset_logits(shipped, test_tok, vocab, text)
    # The temperature is fitted on the validation split only; the test set just reports it.
    calibration = calibrate.calibration_record(
        dataset_logits(shipped, val_tok, vocab, text), val_y, test_logits, test_y
    )
    calibrate.record(out, text=text.as_dict(), calibration=calibration)
    metrics = {
        "test_accuracy": accuracy(test_logits, test_y),
        "test_accuracy_float32_embedding": accuracy(dataset_logits(model, test_tok, vocab, text), test_y),
        **calibrate.summary(calibration),
        "val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "n_train": len(fit_tok),
        "n_val": len(val_tok),
        "n_test": len(test_tok),
        "vocab_size": len(vocab),
        "text": text.as_dict(),
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "seed": args.seed,
        "word_vectors": "ppmi-svd" if args.word_vectors else None,
        "word_vector_reviews": n_vector_reviews,
        "word_dropout": args.word_dropout,
        "data_sha256": imdb_data.sha256(data_path) if data_path.is_file() else None,
        "history": history,
    }
    metrics["tutorial_sentences"] = tutorial_labels(shipped, vocab, text)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return metrics


def tutorial_labels(model: SentimentCNN, vocab: Vocab, text: TextSettings) -> dict[str, str]:
    """The model's label for each of the Captum tutorial's sentences."""
    sentences = [s for s, _ in TUTORIAL_SENTENCES]
    logits = dataset_logits(model, tokenize(sentences, text.lowercase), vocab, text)
    return {s: ("pos" if z > 0 else "neg") for s, z in zip(sentences, logits.tolist())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help=f"tarball, aclImdb folder (default: ${imdb_data.ENV_VAR}, ../shared, download)")
    p.add_argument("--out", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=2, help="epochs without validation gain before stopping")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-size", type=int, default=2500)
    p.add_argument("--vocab-size", type=int, default=25000)
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--word-vectors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="initialise the embedding with PPMI-SVD vectors of the training text",
    )
    p.add_argument(
        "--unsup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the 50,000 unlabelled training reviews to the word-vector corpus",
    )
    p.add_argument("--word-dropout", type=float, default=0.1)
    p.add_argument("--full-precision", action="store_true", help="store the embedding in float32")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
