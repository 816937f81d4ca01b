"""usage: imdb-explain [options] REVIEW|-|FILE|DIR ...

Show which words drove the IMDB sentiment predictions of a running TorchServe (model imdb_sentiment).

Inputs (one per argument): "-" reads stdin (one review; --stdin-lines: one per line), a folder holds
.txt files (one review each; in a pos/ or neg/ folder, the aclImdb layout, that is the true label),
a .csv file has a header with a "text" (or "review") column and an optional "label" (or
"sentiment") column, a .jsonl file one {"text": ..., "label": ...} object per line, any other file
one review per line, and anything else is the review text itself. --label labels the others.

Outputs: the terminal (coloured words; plain text with signed values when not a terminal or with
--no-color), --json (one document), --jsonl (one line per review, written as answers arrive) and
--html REPORT (a self-contained page in the layout of Captum's visualize_text).

Reviews go in bulk: up to --bulk (64) per KServe v1 request, --concurrency requests in flight. A
request that meets a connection error or a 500/502/503/504/507 is sent again (--retries, default 5),
after an exponential backoff with jitter or the server's Retry-After; a 4xx never is.
Address and token: --url / IMDB_URL (default http://127.0.0.1:8080) and --token / IMDB_TOKEN, else
the inference key of --key-file (default ./key_file.json, which `make serve` writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from imdb_client.answers import error_line, is_error
from imdb_client.items import LABELS, InputError, Item, read_items
from imdb_client.report import Source, render_html
from imdb_client.summary import Summary
from imdb_client.transport import (
    DEFAULT_RETRIES,
    DEFAULT_URL,
    MAX_INSTANCES,
    MODEL,
    ClientError,
    RetryPolicy,
    Server,
    resolve_endpoint,
)

# The server's methods (handler/attribution.py METHODS); "exact" integrates in closed form, no steps.
METHODS = ("exact", "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
# --n-steps without --method: Captum's default rule, as LayerIntegratedGradients.attribute uses.
STEPS_METHOD = "gausslegendre"
# Two bulk requests in flight: while the worker explains one, the client encodes the next and
# decodes the last. On the loaded 2-core machine 1, 2 and 4 were within noise (docs/client.md);
# more only queue in front of the one worker.
DEFAULT_CONCURRENCY = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="imdb-explain", description=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("reviews", nargs="+", metavar="REVIEW|-|FILE|DIR")
    what = p.add_argument_group("what to ask")
    what.add_argument("--predict", action="store_true", help="prediction only (no explanation)")
    what.add_argument("--method", choices=METHODS, help="integration method (default: the server's, exact)")
    what.add_argument(
        "--n-steps", type=int, help=f"integration steps; selects --method {STEPS_METHOD} unless a method is given"
    )
    what.add_argument("--model", default=MODEL, help=f"model name (default {MODEL})")
    what.add_argument("--version", help="model version (default: the server's default version)")
    inputs = p.add_argument_group("inputs")
    inputs.add_argument("--label", choices=LABELS, help="true label of reviews that carry none")
    inputs.add_argument("--stdin-lines", action="store_true", help='"-" reads one review per line')
    out = p.add_argument_group("outputs")
    fmt = out.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document: source, summary, results")
    fmt.add_argument("--jsonl", action="store_true", help="one JSON object per review, in input order")
    out.add_argument("--html", metavar="REPORT", help="write a self-contained HTML report of all reviews")
    out.add_argument("--no-color", action="store_true", help="plain text: signed values instead of colours")
    srv = p.add_argument_group("server")
    srv.add_argument("--url", help="inference address (default $IMDB_URL or http://127.0.0.1:8080)")
    srv.add_argument("--token", help="inference token (default $IMDB_TOKEN or the key file's)")
    srv.add_argument("--key-file", default="key_file.json", help="TorchServe's key file (default ./key_file.json)")
    srv.add_argument("--timeout", type=float, default=120, help="seconds to wait for each answer (default 120)")
    srv.add_argument(
        "--bulk", type=int, default=MAX_INSTANCES, help=f"reviews per request (default {MAX_INSTANCES}; 1: one each)"
    )
    srv.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight (default %(default)s)"
    )
    srv.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="times to resend a request after a connection error or a 500/502/503/504/507 (default %(default)s; 0: never)",
    )
    srv.add_argument("--local", metavar="MODEL_DIR", type=Path, help="no server: run the handler in this process")
    args = p.parse_args(argv)
    try:
        args.options = explain_options(args.method, args.n_steps, args.predict)
    except ValueError as err:
        p.error(str(err))
    if args.bulk < 1 or args.concurrency < 1:
        p.error("--bulk and --concurrency must be at least 1")
    if args.retries < 0:
        p.error("--retries must be 0 or more")
    return args


def explain_options(method: str | None, n_steps: int | None, predict: bool) -> dict:
    """The request's explanation options. ``exact`` has no steps, so --method exact --n-steps is an
    error (the server would answer n_steps 0); --n-steps alone selects STEPS_METHOD."""
    if predict:
        if method or n_steps:
            raise ValueError("--method and --n-steps explain; they do not go with --predict")
        return {}
    if method == "exact" and n_steps is not None:
        raise ValueError("--method exact integrates in closed form and takes no --n-steps; pick a quadrature method")
    options: dict = {}
    if n_steps is not None:
        options = {"method": method or STEPS_METHOD, "n_steps": n_steps}
    elif method:
        options = {"method": method}
    return options


def local_answers(items: list[Item], args: argparse.Namespace) -> Iterator[list[tuple[Item, dict]]]:
    """--local: the real handler in this process, 64 reviews a call (torch only imported here)."""
    from handler.inprocess import answer, local_handler

    handler, context = local_handler(args.local)
    for start in range(0, len(items), args.bulk):
        group = items[start : start + args.bulk]
        # JSON bodies carry the options, and a review that starts with "{" stays text.
        bodies = [json.dumps({"text": item.text, **args.options}) for item in group]
        yield list(zip(group, answer(handler, context, bodies, explain=not args.predict)))


def record(index: int, item: Item, answer: dict) -> dict:
    """One result of --json / --jsonl: the input's place and name, its true label, the server's answer."""
    return {"index": index, "name": item.name, "true_label": item.label, "answer": answer}


class Output:
    """Where answers go: --jsonl and the terminal stream them; --json and --html need them all."""

    def __init__(self, args: argparse.Namespace, source: Source) -> None:
        self.args, self.source, self.summary = args, source, Summary()
        self.keep = args.json or bool(args.html)
        self.rows: list[tuple[Item, dict]] = []
        self.terminal = not (args.json or args.jsonl or args.html)
        self.color = not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.console = None
        if self.terminal and self.color:
            from rich.console import Console

            self.console = Console(highlight=False)

    def add(self, item: Item, answer: dict) -> None:
        index = self.summary.total
        self.summary.add(item, answer)
        if is_error(answer):
            print(f"imdb-explain: {item.name or repr(item.text[:40])}: {error_line(answer)}", file=sys.stderr)
        if self.keep:
            self.rows.append((item, answer))
        if self.args.jsonl:
            sys.stdout.write(json.dumps(record(index, item, answer)) + "\n")
        elif self.terminal:
            self._print(item, answer)

    def _print(self, item: Item, answer: dict) -> None:
        from imdb_client.terminal import render_terminal

        if self.console is not None:
            self.console.print(render_terminal(answer, item, color=True))
        else:
            print(render_terminal(answer, item, color=False).plain)

    def close(self) -> None:
        """Write what needs every answer (--json, --html), then the summary line: on stdout for a
        person, on stderr where stdout is a JSON pipeline."""
        if self.args.json:
            print(json.dumps(self._document()))
        if self.args.html:
            self._write_html()
        elif self.terminal and self._worth_a_summary():
            print(self.summary.line())
        if (self.args.jsonl or self.args.json) and self._worth_a_summary():
            print(f"imdb-explain: {self.summary.line()}", file=sys.stderr)  # stdout is for the pipeline

    def _document(self) -> dict:
        """--json's one document: where the answers came from, their summary, then each result."""
        return {
            "model": self.source.model,
            "version": self.source.version,
            "server": self.source.server,
            "summary": self.summary.as_dict(),
            "results": [record(i, item, answer) for i, (item, answer) in enumerate(self.rows)],
        }

    def _write_html(self) -> None:
        """--html's report; the line naming it goes to stdout only when no JSON is written there."""
        Path(self.args.html).write_text(render_html(self.rows, self.source), encoding="utf-8")
        if not (self.args.json or self.args.jsonl):
            print(f"wrote {self.args.html}: {self.summary.line()}")

    def _worth_a_summary(self) -> bool:
        """More than one review, or requests that had to be sent again."""
        return self.summary.total > 1 or self.summary.retries > 0


def run(args: argparse.Namespace, items: list[Item], out: Output) -> None:
    """Send the items and hand each answer to ``out``, with a progress bar on stderr."""
    from tqdm import tqdm

    server = None
    if args.local:
        batches = local_answers(items, args)
    else:
        endpoint = resolve_endpoint(args.url, args.token, args.key_file, args.model, args.version)
        server = Server(
            endpoint,
            explain=not args.predict,
            options=args.options,
            timeout=args.timeout,
            policy=RetryPolicy(retries=args.retries),
            on_retry=lambda line: tqdm.write(f"imdb-explain: {line}", file=sys.stderr),
        )
        batches = server.answers(items, args.bulk, args.concurrency)
    verb = "predicting" if args.predict else "explaining"
    # disable=None: a bar only when stderr is a terminal, never in logs.
    try:
        with tqdm(total=len(items), desc=verb, unit="review", file=sys.stderr, disable=len(items) < 2 or None) as bar:
            for batch in batches:
                for item, answer in batch:
                    out.add(item, answer)
                bar.update(len(batch))
    finally:
        if server is not None:
            out.summary.retried = dict(server.retried)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (1 when any review failed, with reasons on stderr)."""
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        items = read_items(args.reviews, args.label, stdin_lines=args.stdin_lines)
        server = f"in-process: {args.local}" if args.local else (args.url or os.environ.get("IMDB_URL") or DEFAULT_URL)
        out = Output(args, Source(args.model, server.rstrip("/"), args.version))
        run(args, items, out)
    except (ClientError, InputError) as e:
        print(f"imdb-explain: error: {e}", file=sys.stderr)
        return 1
    out.close()
    seconds = time.perf_counter() - started
    if len(items) > 1:
        rate = len(items) / seconds if seconds > 0 else float("inf")
        print(f"imdb-explain: {len(items)} reviews in {seconds:.1f} s ({rate:.1f} reviews/s)", file=sys.stderr)
    return 1 if out.summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
