"""The worker's CPU per explained review, before and after, side by side in one run (issue 18).

usage: python scripts/bench_cpu.py [--old-commit 5ad290c | --old-tree DIR] [--n 512] [--rounds 5]
                                   [--stage-passes 3] [--artifacts DIR] [--data PATH] [--seed 0] [--out FILE]

Two processes, one per source tree: the tree of ``--old-commit`` (checked out as a temporary git
worktree, or ``--old-tree``) and this checkout. Each loads the real handler in-process
(``handler/inprocess.py``: a TorchServe Context, batchSize 8, one torch thread, CPU) on the same
model and answers the same ``--n`` IMDB test reviews (seeded shuffle: IMDB's real length mix),
explain on, in batches of 8, as the frontend would hand them over. After one warm-up pass
each, the parent runs the two alternately, pass by pass (``--rounds`` each), so both see the
same machine load, and prints:

1. reviews per CPU second of the worker process (the issue's measure, steadier on a shared
   machine) and per wall-clock second, pass by pass, the median of each, and their ratio;
2. a per-stage table in CPU µs per review (the median of ``--stage-passes`` instrumented passes
   each: every stage wrapped by name, the names both trees have), with spaCy's tokenizer alone
   timed on the same cleaned texts;
3. a cProfile summary of one pass each: time by area and the top functions;
4. whether the answers are the same: replies byte for byte, and as parsed JSON.

The results also go to ``--out`` (default bench_results/cpu-worker.json). Timings are not asserted
anywhere (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "model_store" / "artifacts"
MARK = "@@bench_cpu "  # the worker's answers on stdout start with this (libraries print there too)
STAGES = (
    ("decode", "decode and validate"),
    ("clean", "clean (breaks, case, long runs)"),
    ("spacy", "spaCy's tokenizer alone"),
    ("tokens", "token lists (tokenize - clean - spaCy)"),
    ("encode", "ids and padding"),
    ("engine", "Layer IG engine"),
    ("answers", "answers (payload)"),
    ("reply", "replies"),
    ("json", "JSON encoding"),
    ("glue", "TorchServe handler glue"),
    ("total", "total (instrumented pass)"),
)


# --- the worker: one process, one tree ----------------------------------------------------------


class Worker:
    """The handler of one tree, loaded as a TorchServe worker loads it, and the passes over the reviews."""

    def __init__(self, artifacts: Path, texts: list[str]):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
        from handler.inprocess import local_handler

        self.texts = texts
        self.handler, self.context = local_handler(artifacts, batch_size=8)
        self.passes(1)  # warm-up: spaCy's cache, torch's kernels, the lru caches

    def one_pass(self) -> list:
        from handler.inprocess import replies

        return replies(self.handler, self.context, self.texts, True)

    def passes(self, n: int) -> list[tuple[float, float]]:
        """(CPU seconds of this process, wall-clock seconds) of each of ``n`` passes over the reviews."""
        out = []
        for _ in range(n):
            cpu, wall = time.process_time(), time.perf_counter()
            self.one_pass()
            out.append((time.process_time() - cpu, time.perf_counter() - wall))
        return out

    def stages(self) -> dict[str, float]:
        """µs per review in each stage of one pass, every stage wrapped by its name."""
        import handler.core as core
        import handler.sentiment_handler as adapter
        import handler.text as text

        spent: Counter = Counter()
        targets = [
            (core.SentimentCore, "read", "read"),
            (core.SentimentCore, "_encode", "encode_all"),
            (core.SentimentCore, "_tokenize", "tokenize"),
            (text, "clean", "clean"),
            (core, "encode", "encode"),
            (core.SentimentCore, "infer", "infer"),
            (core, "layer_ig", "engine"),
            (core.SentimentCore, "reply", "reply"),
            (adapter.SentimentHandler, "_send", "json"),
        ]
        saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
        for owner, name, key in targets:
            setattr(owner, name, _timed(owner.__dict__[name], key, spent))
        try:
            started = time.process_time()
            self.one_pass()
            spent["total"] = time.process_time() - started
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)
        spent["spacy"] = self.spacy_alone()
        return _stage_table(spent, len(self.texts))

    def spacy_alone(self) -> float:
        """Seconds of spaCy's tokenizer alone on the reviews as ``clean`` gives them, in the tree's
        memory zone where it has one (the handler tokenizes in it)."""
        import handler.text as text

        cleaned = [text.clean(t) for t in self.texts]
        zone = getattr(text, "memory_zone", contextlib.nullcontext)
        tokenizer = text.spacy_tokenizer()
        started = time.process_time()
        for start in range(0, len(cleaned), 8):  # one zone per batch, as the handler
            with zone():
                for _ in tokenizer.pipe(cleaned[start : start + 8]):
                    pass
        return time.process_time() - started

    def profile(self, top: int) -> dict:
        """cProfile of one pass: seconds by area, and the ``top`` functions by own time."""
        profiler = cProfile.Profile()
        profiler.enable()
        self.one_pass()
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO())
        areas: Counter = Counter()
        rows = []
        for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
            areas[_area(filename, name)] += own
            rows.append((own, calls, cumulative, _where(filename, line, name)))
        rows.sort(reverse=True)
        n = len(self.texts)
        return {
            "seconds": stats.total_tt,
            "areas_us_per_review": {k: round(v / n * 1e6, 1) for k, v in areas.most_common()},
            "top": [
                {
                    "function": w,
                    "calls": c,
                    "own_us_per_review": round(o / n * 1e6, 1),
                    "cum_us_per_review": round(cu / n * 1e6, 1),
                }
                for o, c, cu, w in rows[:top]
            ],
        }


def _timed(function, key: str, spent: Counter):
    def timed(*args, **kwargs):
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.process_time() - started

    return timed


def _stage_table(spent: Counter, n: int) -> dict[str, float]:
    """Seconds per wrapped function -> µs per review per stage (the stages do not overlap)."""
    tokenize_rest = spent["tokenize"] - spent["clean"] - spent["spacy"]
    stages = {
        "decode": spent["read"] - spent["encode_all"],
        "clean": spent["clean"],
        "spacy": spent["spacy"],
        "tokens": tokenize_rest,
        "encode": spent["encode_all"] - spent["tokenize"],
        "engine": spent["engine"],
        "answers": spent["infer"] - spent["engine"],
        "reply": spent["reply"],
        "json": spent["json"],
        "glue": spent["total"] - spent["read"] - spent["infer"] - spent["reply"] - spent["json"],
        "total": spent["total"],
    }
    return {k: round(v / n * 1e6, 1) for k, v in stages.items()}


def _area(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    for area, marks in (
        ("spaCy", ("spacy", "thinc")),
        ("torch", ("torch",)),
        ("JSON", ("json",)),
        ("regex", ("re.Pattern", "/re/", "sre_")),
        ("numpy", ("numpy",)),
        ("handler", ("/handler/",)),
        ("TorchServe", ("/ts/",)),
    ):
        if any(m in where for m in marks):
            return area
    return "other Python"


def _where(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    parts = Path(filename).parts
    return f"{'/'.join(parts[-2:])}:{line}({name})"


def worker_main(tree: Path, texts_file: Path, artifacts: Path) -> None:
    """Serve the parent's commands on stdin, one JSON answer line each on stdout."""
    texts = json.loads(texts_file.read_text())
    worker = Worker(artifacts, texts)
    _say({"ready": True, "tree": str(tree)})
    for line in sys.stdin:
        command = json.loads(line)
        what = command["do"]
        if what == "passes":
            _say({"seconds": worker.passes(command["n"])})
        elif what == "stages":
            _say({"stages": worker.stages()})
        elif what == "profile":
            _say({"profile": worker.profile(command["top"])})
        elif what == "answers":
            Path(command["path"]).write_text(json.dumps(worker.one_pass()))
            _say({"answers": command["path"]})
        else:
            return


def _say(message: dict) -> None:
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


# --- the parent: two workers side by side -------------------------------------------------------


class Remote:
    """A worker process on one tree, driven line by line."""

    def __init__(self, name: str, tree: Path, texts_file: Path, artifacts: Path):
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(tree),
            str(texts_file),
            str(artifacts),
        ]
        self.process = subprocess.Popen(
            command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.read()

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"the {self.name} worker exited (status {self.process.wait()})")

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.write(json.dumps({"do": "quit"}) + "\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)


@contextlib.contextmanager
def old_tree(commit: str, tree: Path | None):
    """``tree`` as given, or a temporary detached git worktree of ``commit``, removed after."""
    if tree is not None:
        yield tree
        return
    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as scratch:
        path = Path(scratch, commit)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit], cwd=REPO, check=True, capture_output=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)


def pick_texts(data: str | None, n: int, seed: int) -> list[str]:
    """The first ``n`` IMDB test reviews of a seeded shuffle (``bench_inputs.pick_reviews``' "imdb" rule)."""
    from imdb_bench import inputs as bench_inputs

    texts = bench_inputs.imdb_test_texts(data)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order[:n]]


def compare_answers(old_file: Path, new_file: Path) -> dict:
    """Replies byte for byte, and as parsed JSON (floats compared exactly)."""
    old, new = json.loads(old_file.read_text()), json.loads(new_file.read_text())
    same_bytes = sum(a == b for a, b in zip(old, new))
    same_values = sum(_parsed(a) == _parsed(b) for a, b in zip(old, new))
    return {
        "replies": len(old),
        "same_bytes": same_bytes,
        "same_parsed_json": same_values,
        "count_equal": len(old) == len(new),
    }


def _parsed(reply):
    return json.loads(reply) if isinstance(reply, str) else reply


def run(a: argparse.Namespace) -> dict:
    texts = pick_texts(a.data, a.n, a.seed)
    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as scratch, old_tree(a.old_commit, a.old_tree) as old:
        texts_file = Path(scratch, "texts.json")
        texts_file.write_text(json.dumps(texts))
        workers = {"before": Remote("before", old, texts_file, a.artifacts)}
        workers["after"] = Remote("after", REPO, texts_file, a.artifacts)
        try:
            seconds = timed_passes(workers, a.rounds)
            stages = stage_medians(workers, a.stage_passes)
            profiles = {name: w.ask(do="profile", top=a.top)["profile"] for name, w in workers.items()}
            answers = same_answers(workers, Path(scratch))
        finally:
            for w in workers.values():
                w.close()
    out = {"reviews": len(texts), "old": a.old_tree and str(a.old_tree) or a.old_commit}
    return {
        **out,
        **review_rates(seconds, len(texts)),
        "stages_us_per_review": stages,
        "profile": profiles,
        "answers": answers,
    }


def timed_passes(workers: dict[str, Remote], rounds: int) -> dict[str, list]:
    """(CPU, wall) seconds of each timed pass, by worker; the workers alternate pass by pass, so that
    both see the same machine load."""
    seconds = {name: [] for name in workers}
    for _ in range(rounds):
        for name, w in workers.items():
            seconds[name] += w.ask(do="passes", n=1)["seconds"]
    return seconds


def stage_medians(workers: dict[str, Remote], passes: int) -> dict[str, dict[str, float]]:
    """CPU µs per review of each stage, the median of ``passes`` instrumented passes, by worker."""
    runs = {name: [] for name in workers}
    for _ in range(passes):
        for name, w in workers.items():
            runs[name].append(w.ask(do="stages")["stages"])
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}


def same_answers(workers: dict[str, Remote], scratch: Path) -> dict:
    """Each worker writes its replies to a file of ``scratch``; the two files compared."""
    files = {name: Path(scratch, f"{name}.json") for name in workers}
    for name, w in workers.items():
        w.ask(do="answers", path=str(files[name]))
    return compare_answers(files["before"], files["after"])


def review_rates(seconds: dict[str, list], reviews: int) -> dict:
    """Reviews per CPU and per wall-clock second, pass by pass and their median, by worker, and the
    speedup of the medians (after / before)."""
    out = {}
    for clock, i in (("cpu", 0), ("wall", 1)):
        rates = {name: [reviews / s[i] for s in secs] for name, secs in seconds.items()}
        median = {name: statistics.median(r) for name, r in rates.items()}
        out[f"reviews_per_{clock}_s"] = {name: [round(r, 1) for r in rs] for name, rs in rates.items()}
        out[f"median_reviews_per_{clock}_s"] = {name: round(r, 1) for name, r in median.items()}
        out[f"speedup_{clock}"] = round(median["after"] / median["before"], 2)
    return out


def report(result: dict) -> str:
    lines = [
        f"{result['reviews']} IMDB test reviews, explain on, batches of 8, one torch thread, CPU; before = {result['old']}"
    ]
    lines.append("")
    for clock, what in (("cpu", "per CPU second of the worker"), ("wall", "per wall-clock second")):
        lines.append(f"reviews {what}, pass by pass (alternating):")
        for name, rates in result[f"reviews_per_{clock}_s"].items():
            median = result[f"median_reviews_per_{clock}_s"][name]
            lines.append(f"  {name:6s} {' '.join(f'{r:7.1f}' for r in rates)}   median {median:.1f}")
        lines.append(f"  speedup (median after / median before): {result[f'speedup_{clock}']:.2f}x")
    lines.append("")
    lines.append(f"{'stage, CPU µs per review (median of passes)':44s} {'before':>9s} {'after':>9s} {'ratio':>7s}")
    before, after = result["stages_us_per_review"]["before"], result["stages_us_per_review"]["after"]
    for key, label in STAGES:
        ratio = f"{before[key] / after[key]:.2f}x" if after[key] > 0 and before[key] > 0 else "-"
        lines.append(f"  {label:42s} {before[key]:9.1f} {after[key]:9.1f} {ratio:>7s}")
    lines.append("")
    for name, profile in result["profile"].items():
        lines.append(f"cProfile, {name}: {profile['seconds']:.3f} s for the pass (profiler overhead included)")
        lines.append(
            "  by area, µs/review: " + ", ".join(f"{k} {v}" for k, v in profile["areas_us_per_review"].items())
        )
        for row in profile["top"]:
            lines.append(
                f"  {row['own_us_per_review']:8.1f} own {row['cum_us_per_review']:8.1f} cum {row['calls']:7d}x  {row['function']}"
            )
        lines.append("")
    ans = result["answers"]
    lines.append(
        f"answers: {ans['same_bytes']}/{ans['replies']} replies byte-identical, "
        f"{ans['same_parsed_json']}/{ans['replies']} equal as parsed JSON (floats exact)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(Path(argv[1]), Path(argv[2]), Path(argv[3]))
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-commit", default="5ad290c", help="the 'before' tree, as a temporary git worktree")
    p.add_argument("--old-tree", type=Path, default=None, help="an existing 'before' tree instead")
    p.add_argument("--n", type=int, default=512, help="IMDB test reviews per pass")
    p.add_argument("--rounds", type=int, default=5, help="timed passes per tree, alternating")
    p.add_argument("--stage-passes", type=int, default=3, help="instrumented passes per tree (median)")
    p.add_argument("--top", type=int, default=12, help="functions listed per profile")
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    p.add_argument("--data", default=None, help="IMDB tarball, folder or label<TAB>text TSV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "cpu-worker.json")
    a = p.parse_args(argv)
    result = run(a)
    print(report(result))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
    a.out.write_text(
        json.dumps({"command": "python scripts/bench_cpu.py " + " ".join(argv), "machine": machine, **result}, indent=2)
        + "\n"
    )
    return result


if __name__ == "__main__":
    main()
