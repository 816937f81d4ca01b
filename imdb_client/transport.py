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

**Retries.** Predictions and explanations are pure functions of the body, so sending one again is
safe. A connection error (refused, reset, a connect timeout) and the statuses of a server that may
answer next time (500 and 507: a worker died with the batch; 502/503/504: a proxy, a full queue, a
gateway timeout) are retried up to ``RetryPolicy.retries`` times, after a bounded exponential
backoff with jitter (0.5, 1, 2, 4, 8 s, each drawn from its upper half, at most 10 s), or after the
server's ``Retry-After`` when that is longer (at most 60 s). A 4xx is never retried: the same body
would get the same answer. A read timeout is not retried either (the server has the request and is
slow; sending it again would only queue another copy). ``Server.retried`` counts the retries by
cause, for the run's summary.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
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
# Statuses worth sending the same request again for (module docstring, "Retries").
RETRY_STATUSES = frozenset({500, 502, 503, 504, 507})
DEFAULT_RETRIES = 5


class ClientError(Exception):
    """A failure to report in one line on stderr; ``fatal`` ones (no server, bad token) stop the run.
    A non-fatal one carries the server's error ``answer`` ({"code", "type", "message"}), which takes
    the review's place in the output, as the server's own per-review errors do."""

    def __init__(self, message: str, fatal: bool = True, answer: dict | None = None):
        super().__init__(message)
        self.fatal = fatal
        self.answer = answer


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before sending a request again."""

    retries: int = DEFAULT_RETRIES  # after the first attempt; 0: never
    base: float = 0.5  # the first backoff, seconds; it doubles with each retry
    cap: float = 10.0  # the longest backoff
    max_retry_after: float = 60.0  # the longest Retry-After honoured

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): the backoff, drawn from the upper
        half of its step so that clients spread out, or the server's Retry-After when that is longer."""
        backoff = min(self.cap, self.base * 2**retry) * rng.uniform(0.5, 1.0)
        if retry_after is None:
            return backoff
        return min(max(backoff, retry_after), self.max_retry_after)


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


def pause(seconds: float) -> None:
    """The wait between attempts (a function of its own, so that tests can record it)."""
    time.sleep(seconds)


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
        self,
        endpoint: Endpoint,
        explain: bool = True,
        options: dict | None = None,
        timeout: float = 120,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint, self.explain, self.options, self.timeout = endpoint, explain, dict(options or {}), timeout
        self.policy = policy or RetryPolicy()
        self.on_retry = on_retry  # told one line per retry (the CLI prints it on stderr)
        self.retried: Counter[str] = Counter()  # retries by cause: "507", "connection error", ...
        self._lock = threading.Lock()
        self._rng = random.Random()
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
        """One request, sent again after a connection error or a RETRY_STATUSES answer (at most
        ``policy.retries`` times); the last answer, or a fatal ClientError when none came."""
        url, data = self.endpoint.url + path, json.dumps(body).encode()
        for retry in range(self.policy.retries + 1):
            last = retry == self.policy.retries
            try:
                r = self._session().post(url, data=data, timeout=self.timeout)
            except requests.ConnectionError as err:  # ConnectTimeout included
                if last:
                    raise self._unreachable(err, retry) from None
                self._wait(retry, "connection error", None, f"cannot reach {self.endpoint.url}: {_reason(err)}")
                continue
            except requests.Timeout:
                raise ClientError(f"no answer from {self.endpoint.url} within {self.timeout:g}s") from None
            if r.status_code not in RETRY_STATUSES or last:
                return self._read(r, url)
            after = retry_after(r.headers.get("Retry-After"))
            self._wait(retry, str(r.status_code), after, f"{self.endpoint.url} answered {r.status_code}")
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _wait(self, retry: int, cause: str, after: float | None, what: str) -> None:
        seconds = self.policy.delay(retry, after, self._rng)
        with self._lock:
            self.retried[cause] += 1
        if self.on_retry:
            self.on_retry(f"{what}; retry {retry + 1} of {self.policy.retries} in {seconds:.1f} s")
        pause(seconds)

    def _unreachable(self, err: requests.ConnectionError, retries: int) -> ClientError:
        tried = f" (after {retries} retries)" if retries else ""
        if "refused" in str(err).lower():
            return ClientError(
                f"no server at {self.endpoint.url}: connection refused{tried}. Is TorchServe running? "
                "Start it with `make serve` (or pass --url / IMDB_URL)."
            )
        return ClientError(f"cannot reach {self.endpoint.url}{tried}: {err}")

    @staticmethod
    def _read(r: requests.Response, url: str) -> tuple[int, object]:
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


def _reason(err: Exception) -> str:
    """The innermost cause of a requests error, short: "Connection refused", "RemoteDisconnected"."""
    text = str(err)
    for marker in ("Connection refused", "Connection reset", "RemoteDisconnected", "Connection aborted"):
        if marker in text:
            return marker
    return text[:120]
