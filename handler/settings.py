"""The handler's settings: ``model-config.yaml``'s ``handler:`` section, typed, with the one set of defaults.

The handler, the in-process harness (``handler.inprocess``, hence ``imdb-explain --local``), the
benchmark and the tests all build their settings here, so an installed client without the YAML
answers exactly as the server does (a test holds the shipped YAML to these defaults).

Unknown keys are an error when the worker starts, with the nearest known key suggested: a typo
such as ``n_step:`` must not be ignored silently. The text pipeline (``min_len``, ``max_tokens``,
lower-casing) is not here: it belongs to the weights and comes from ``model_config.json``
(``handler.text.TextSettings``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from handler.attribution import IGSettings

# Keys that used to live in this section and moved: a clear message instead of "unknown key".
MOVED = {
    "min_len": 'a text setting recorded with the weights (model_config.json "text")',
    "max_tokens": 'a text setting recorded with the weights (model_config.json "text")',
}


# The numeric settings' bounds, checked in this order: (field, whether its value is out of bounds, the error).
# A predicate each, rather than (low, high) pairs, so NaN and odd types fail exactly as the comparison written.
BOUNDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("torch_threads", lambda n: n < 0, "handler.torch_threads must be >= 0"),
    ("release_cache_above_tokens", lambda n: n < 0, "handler.release_cache_above_tokens must be >= 0"),
    ("max_chars", lambda n: n < 1, "handler.max_chars and handler.max_instances must be >= 1"),
    ("max_instances", lambda n: n < 1, "handler.max_chars and handler.max_instances must be >= 1"),
    ("gpu_memory_fraction", lambda f: not 0.0 <= f <= 1.0, "handler.gpu_memory_fraction must be in [0, 1] (0: no cap)"),
)


class SettingsError(ValueError):
    """A bad ``handler:`` section; raised at worker start, before any request."""


@dataclass(frozen=True)
class ExplainSettings:
    """Defaults and limits of explanations (``handler.explain``); requests may override some."""

    engine: str = "fast"  # fast (structure-aware exact Layer IG) | captum (LayerIntegratedGradients)
    method: str = "exact"  # the closed-form path integral; or any Captum rule (gausslegendre, riemann_*)
    n_steps: int = 50  # for quadrature methods
    adaptive: bool = True  # quadrature: double steps per review until |delta| <= rtol * |F(x) - F(ref)|
    rtol: float = 1e-3
    max_steps: int = 1024  # also the largest n_steps a request may ask for
    ties: str = "split"  # max-pool ties: share the gradient evenly ("split") or give it to the first window
    chunk_elements: int = 4_000_000  # CPU: activation floats per chunk (cache-sized chunks)
    gpu_chunk_elements: int = 536_870_912  # GPU: 2 GiB of float32 per chunk, few large chunks

    def ig(self, on_gpu: bool) -> IGSettings:
        """The engine's settings on this device (a GPU wants few, large chunks)."""
        return IGSettings(
            engine=self.engine,
            method=self.method,
            n_steps=self.n_steps,
            adaptive=self.adaptive,
            rtol=self.rtol,
            max_steps=self.max_steps,
            ties=self.ties,
            chunk_elements=self.gpu_chunk_elements if on_gpu else self.chunk_elements,
        )


@dataclass(frozen=True)
class HandlerSettings:
    labels: tuple[str, str] = ("neg", "pos")
    # Intra-op threads per CPU worker; 0 = torch's default. One thread avoids oversubscription when a
    # worker shares the cores with the frontend and other workers (docs/performance.md).
    torch_threads: int = 1
    max_chars: int = 100_000  # a longer review gets 413 before tokenizing
    max_instances: int = 64  # reviews in one KServe request (v1 instances / v2 BYTES elements)
    # GPU workers only. A per-process cap on the caching allocator (0 = no cap): set it when several
    # workers or models share one GPU. And a batch whose padded ids exceed this many tokens hands the
    # allocator's cached blocks back afterwards, so one outsized batch does not pin its peak for good.
    gpu_memory_fraction: float = 0.0
    release_cache_above_tokens: int = 16_384
    explain: ExplainSettings = field(default_factory=ExplainSettings)

    def __post_init__(self) -> None:
        """Refuse a bad section at worker start; the checks run in a fixed order, the first fault is the error."""
        if len(self.labels) != 2 or not all(isinstance(x, str) and x for x in self.labels):
            raise SettingsError(f"handler.labels must be two names, got {list(self.labels)}")
        for name, bad, message in BOUNDS:
            if bad(getattr(self, name)):
                raise SettingsError(message)
        try:
            self.explain.ig(on_gpu=False)  # the engine's own checks (method, engine, ties, steps)
        except ValueError as err:
            raise SettingsError(f"handler.explain: {err}") from None

    @classmethod
    def from_section(cls, section: dict | None) -> HandlerSettings:
        """Settings from the ``handler:`` mapping; missing keys take the defaults above."""
        section = dict(section or {})
        explain = _typed(ExplainSettings, section.pop("explain", None) or {}, "handler.explain")
        values = _typed(cls, section, "handler")
        if "labels" in values:
            values["labels"] = tuple(values["labels"])
        return cls(**values, explain=ExplainSettings(**explain))

    @classmethod
    def load(cls, model_config: Path | None) -> HandlerSettings:
        """Settings from a ``model-config.yaml`` file; the defaults where there is none."""
        if model_config is None or not Path(model_config).exists():
            return cls()
        import yaml

        return cls.from_section((yaml.safe_load(Path(model_config).read_text()) or {}).get("handler"))

    def as_dict(self) -> dict:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "explain"},
            "labels": list(self.labels),
            "explain": {f.name: getattr(self.explain, f.name) for f in fields(self.explain)},
        }


def _typed(cls: type, values: dict, where: str) -> dict:
    """Check ``values`` against ``cls``'s fields: known keys only, each of its field's type."""
    if not isinstance(values, dict):
        raise SettingsError(f"{where} must be a mapping")
    defaults = cls()
    known = [f.name for f in fields(cls) if f.name != "explain"]
    for key, value in values.items():
        if key in MOVED:
            raise SettingsError(f"{where}.{key} is no longer read here: it is {MOVED[key]}")
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"
            raise SettingsError(f"{where}: unknown key {key!r}{hint}")
        _check_type(value, getattr(defaults, key), f"{where}.{key}")
    return dict(values)


def _check_type(value: Any, default: Any, where: str) -> None:
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if expected is tuple and isinstance(value, list):
        return
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise SettingsError(f"{where} must be {expected.__name__}, got {type(value).__name__}")
