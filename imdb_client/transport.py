"""HTTP to TorchServe: where the server is, how to authenticate, and the two ways to send reviews.

* **bulk** (default): KServe v1, ``POST /v1/models/{model}:explain`` (or ``:predict``) with
  ``{"instances": [{"text": ..., options}, ...]}``, up to ``max_instances`` (64) reviews a request.
  The handler reads v1 bodies itself on the plain config.properties server too, and answers
  ``{"explanations": [...]}`` with one answer or error object per instance, in order.
* **single**: one ``POST /explanations/{model}[/{version}]`` per review. TorchServe 0.12 routes
  KServe paths to the model's default version only (its frontend passes no version), so
  ``--version`` uses this form.

Either way several requests are in flight at once (``concurrency``), so that the frontend can put
them in one batch (batchSize 8) while the client encodes and decodes JSON. docs/client.md has the
measurements behind the defaults.

Every failure becomes a ClientError whose message says what to do. Server down, a rejected token
and an unknown model are fatal (every review would fail alike); a review's own 4xx is not.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from imdb_client.answers import error_line
from imdb_client.items import Item

DEFAULT_URL = "http://127.0.0.1:8080"
MODEL = "imdb_sentiment"
# The KServe body limit of the shipped model-config.yaml (handler.max_instances).
MAX_INSTANCES = 64
# Bytes of review text per bulk request: well below config.properties' max_request_size (1 MiB),
# so that a chunk of long reviews is split rather than refused with 413.
MAX_CHUNK_BYTES = 512 * 1024


class ClientError(Exception):
    """A failure to report in one line on stderr; ``fatal`` ones (no server, bad token) stop the run.
    A non-fatal one carries the server's error ``answer`` ({"code", "type", "message"}), which takes
    the review's place in the output, as the server's own per-review errors do."""

    def __init__(self, message: str, fatal: bool = True, answer: dict | None = None):
        super().__init__(message)
        self.fatal = fatal
        self.answer = answer


@dataclass
class Endpoint:
    url: str
    token: str | None
    token_source: str  # where the token was read from, for the wrong-token message
    model: str = MODEL
    version: str | None = None  # None: the model's default version


def resolve_endpoint(url: str | None, token: str | None, key_file: str, model: str = MODEL, version=None) -> Endpoint:
    """Flags win over IMDB_URL / IMDB_TOKEN, which win over the key file's inference key.
    A missing key file is not an error: a server without token auth needs no token."""
    url = (url or os.environ.get("IMDB_URL") or DEFAULT_URL).rstrip("/")
    if token:
        return Endpoint(url, token, "--token", model, version)
    if os.environ.get("IMDB_TOKEN"):
        return Endpoint(url, os.environ["IMDB_TOKEN"], "$IMDB_TOKEN", model, version)
    path = Path(key_file).resolve()
    try:
        key = json.loads(path.read_text())["inference"]
    except FileNotFoundError:
        return Endpoint(
            url,
            None,
            f"nowhere: {path} does not exist (TorchServe writes it in its working "
            "directory when it starts; pass --key-file, --token or IMDB_TOKEN)",
            model,
            version,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ClientError(f"cannot read the inference key from {path}: {err!r}") from None
    source = f"{path}"
    if key.get("expiration time"):
        source += f" (expiration time {key['expiration time']})"
    return Endpoint(url, key["key"], source, model, version)


def chunks(items: list[Item], size: int, max_bytes: int = MAX_CHUNK_BYTES) -> list[list[Item]]:
    """Consecutive runs of at most ``size`` items and about ``max_bytes`` of text (a single longer
    review is a chunk of its own), in order."""
    out: list[list[Item]] = []
    current: list[Item] = []
    used = 0
    for item in items:
        n = len(item.text.encode("utf-8"))
        if current and (len(current) >= size or used + n > max_bytes):
            out.append(current)
            current, used = [], 0
        current.append(item)
        used += n
    if current:
        out.append(current)
    return out


class Server:
    """Sends items to one model on one server; thread-safe (one keep-alive session per thread)."""

    def __init__(
        self, endpoint: Endpoint, explain: bool = True, options: dict | None = None, timeout: float = 120
    ) -> None:
        self.endpoint, self.explain, self.options, self.timeout = endpoint, explain, dict(options or {}), timeout
        self._local = threading.local()

    # ------------------------------------------------------------------ requests

    def single(self, item: Item) -> dict:
        """One review, one plain request: its answer, or its error object (non-fatal errors)."""
        ep = self.endpoint
        path = f"/{'explanations' if self.explain else 'predictions'}/{ep.model}"
        if ep.version:
            path += f"/{ep.version}"
        status, body = self._post(path, {"text": item.text, **self.options})
        if status == 200:
            return body
        err = self._error(status, body)
        if err.fatal:
            raise err
        return err.answer

    def bulk(self, items: list[Item]) -> list[dict]:
        """Up to MAX_INSTANCES reviews in one KServe v1 request: one answer or error object each."""
        ep = self.endpoint
        verb, key = ("explain", "explanations") if self.explain else ("predict", "predictions")
        instances = [{"text": item.text, **self.options} for item in items]
        status, body = self._post(f"/v1/models/{ep.model}:{verb}", {"instances": instances})
        answers = body.get(key) if isinstance(body, dict) else None
        # A request whose reviews all failed gets the first error's status, with every error inline.
        if isinstance(answers, list) and (status == 200 or 400 <= status < 500):
            if len(answers) != len(items):
                raise ClientError(f"{ep.url} answered {len(answers)} {key} for {len(items)} reviews")
            return answers
        err = self._error(status, body)
        if err.fatal:
            raise err
        return [err.answer] * len(items)

    def answers(self, items: list[Item], bulk: int, concurrency: int) -> Iterator[list[tuple[Item, dict]]]:
        """(item, answer) pairs in input order, a chunk at a time as they complete in order:
        ``bulk`` reviews per request (1: plain requests), ``concurrency`` requests in flight."""
        if bulk > 1 and self.endpoint.version is None:
            groups, send = chunks(items, bulk), self.bulk
        else:
            groups, send = [[item] for item in items], lambda group: [self.single(group[0])]
        # A window of 2 x concurrency submitted requests: the workers stay busy while the oldest is
        # read, memory stays bounded, and after a fatal error nothing more is sent.
        pool = ThreadPoolExecutor(max(1, concurrency))
        window: deque = deque()
        try:
            for group in groups:
                window.append((group, pool.submit(send, group)))
                if len(window) >= 2 * max(1, concurrency):
                    group, future = window.popleft()
                    yield list(zip(group, future.result()))
            while window:
                group, future = window.popleft()
                yield list(zip(group, future.result()))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ plumbing

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Content-Type"] = "application/json"
            if self.endpoint.token:
                session.headers["Authorization"] = f"Bearer {self.endpoint.token}"
        return session

    def _post(self, path: str, body: dict) -> tuple[int, object]:
        url = self.endpoint.url + path
        try:
            r = self._session().post(url, data=json.dumps(body).encode(), timeout=self.timeout)
        except requests.ConnectionError as err:
            if "refused" in str(err).lower():
                raise ClientError(
                    f"no server at {self.endpoint.url}: connection refused. Is TorchServe running? "
                    "Start it with `make serve` (or pass --url / IMDB_URL)."
                ) from None
            raise ClientError(f"cannot reach {self.endpoint.url}: {err}") from None
        except requests.Timeout:
            raise ClientError(f"no answer from {self.endpoint.url} within {self.timeout:g}s") from None
        try:
            return r.status_code, r.json()
        except ValueError:
            if r.status_code == 200:
                raise ClientError(f"{url} answered something that is not JSON: {r.text[:200]!r}") from None
            return r.status_code, {"code": r.status_code, "type": r.reason or "", "message": r.text.strip()}

    def _error(self, status: int, body: object) -> ClientError:
        ep = self.endpoint
        info = body if isinstance(body, dict) else {}
        message, kind = str(info.get("message", body)), str(info.get("type", ""))
        # TorchServe 0.12 answers a bad token with 400 InvalidKeyException "Token Authorization failed...".
        if status in (401, 403) or (status == 400 and ("token" in message.lower() or kind == "InvalidKeyException")):
            return ClientError(
                f"the server at {ep.url} rejected the token: it is wrong or expired "
                f"(token read from {ep.token_source}). Server said: {message}. A restarted "
                "TorchServe writes new keys to key_file.json in its working directory."
            )
        answer = {"code": status, "type": kind, "message": message}
        if status == 404:  # the model (or version) is not there: every review would fail alike
            which = ep.model + (f" version {ep.version}" if ep.version else "")
            return ClientError(f"the server at {ep.url} has no model {which}: {error_line(answer)}")
        return ClientError(f"the server at {ep.url} answered {error_line(answer)}", fatal=False, answer=answer)
