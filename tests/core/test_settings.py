"""The handler's one settings object: defaults, the shipped YAML, and refusals at worker start."""

import pytest
import torch
import yaml

from handler import device
from handler.settings import ExplainSettings, HandlerSettings, SettingsError
from tests.helpers import REPO

SHIPPED_YAML = REPO / "model-config.yaml"


def test_the_shipped_yaml_gives_exactly_the_code_defaults():
    # So the in-process handler without the YAML (an installed imdb-explain --local) answers as the server.
    assert HandlerSettings.load(SHIPPED_YAML) == HandlerSettings()
    assert HandlerSettings.load(None) == HandlerSettings() == HandlerSettings.load(REPO / "no-such.yaml")


def test_the_defaults_are_the_served_ones():
    ig = HandlerSettings().explain.ig(on_gpu=False)
    assert (ig.engine, ig.method, ig.adaptive, ig.n_steps, ig.ties) == ("fast", "exact", True, 50, "split")
    assert HandlerSettings().explain.ig(on_gpu=True).chunk_elements == ExplainSettings().gpu_chunk_elements


def section(**changes) -> dict:
    handler = yaml.safe_load(SHIPPED_YAML.read_text())["handler"]
    for key, value in changes.items():
        target = handler["explain"] if key.startswith("explain.") else handler
        target[key.removeprefix("explain.")] = value
    return handler


def test_values_from_the_section_are_read():
    got = HandlerSettings.from_section(section(max_chars=10, **{"explain.method": "gausslegendre", "explain.rtol": 1}))
    assert (got.max_chars, got.explain.method, got.explain.rtol) == (10, "gausslegendre", 1)
    assert got.labels == ("neg", "pos")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"explain.n_step": 8}, "handler.explain: unknown key 'n_step'; did you mean 'n_steps'"),
        ({"max_char": 8}, "handler: unknown key 'max_char'; did you mean 'max_chars'"),
        ({"zzz": 1}, "handler: unknown key 'zzz'; known keys: labels"),
        ({"min_len": 7}, "model_config.json"),
        ({"max_tokens": 512}, "model_config.json"),
        ({"max_chars": "100"}, "handler.max_chars must be int, got str"),
        ({"explain.adaptive": "yes"}, "handler.explain.adaptive must be bool"),
        ({"explain.n_steps": True}, "handler.explain.n_steps must be int, got bool"),
        ({"explain.method": "simpson"}, "handler.explain: method must be one of"),
        ({"explain.engine": "captum"}, "exact"),  # exact needs the fast engine
        ({"labels": ["only"]}, "two names"),
        ({"gpu_memory_fraction": 1.5}, "gpu_memory_fraction"),
    ],
)
def test_bad_sections_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(SettingsError, match=None) as err:
        HandlerSettings.from_section(section(**changes))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"torch_threads": -1}, "handler.torch_threads must be >= 0"),
        ({"release_cache_above_tokens": -1}, "handler.release_cache_above_tokens must be >= 0"),
        ({"max_chars": 0}, "handler.max_chars and handler.max_instances must be >= 1"),
        ({"max_instances": 0}, "handler.max_chars and handler.max_instances must be >= 1"),
        ({"gpu_memory_fraction": -0.5}, "handler.gpu_memory_fraction must be in [0, 1] (0: no cap)"),
        # Two faults: the first in the order of the checks is the error.
        ({"labels": ["only"], "torch_threads": -1}, "handler.labels must be two names, got ['only']"),
        ({"release_cache_above_tokens": -1, "torch_threads": -1}, "handler.torch_threads must be >= 0"),
        ({"max_instances": 0, "release_cache_above_tokens": -1}, "handler.release_cache_above_tokens must be >= 0"),
        ({"gpu_memory_fraction": 2.0, "max_instances": 0}, "handler.max_chars and handler.max_instances must be >= 1"),
        ({"explain.ties": "last", "gpu_memory_fraction": 2.0}, "handler.gpu_memory_fraction must be in [0, 1]"),
    ],
)
def test_each_bound_has_its_message_and_the_first_fault_checked_is_the_error(changes, message):
    with pytest.raises(SettingsError) as err:
        HandlerSettings.from_section(section(**changes))
    assert str(err.value).startswith(message)


def test_an_outsized_batch_releases_the_gpu_allocator_cache(monkeypatch):
    # No GPU here: torch.cuda.empty_cache is replaced to see whether, and when, the handler calls it.
    released = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(True))
    settings = HandlerSettings(release_cache_above_tokens=1000)
    gpu = torch.device("cuda:0")
    assert [device.after_batch(gpu, n, settings) for n in (999, 1000, 1001)] == [False, False, True]
    assert not device.after_batch(torch.device("cpu"), 10**6, settings)
    assert not device.after_batch(gpu, 10**6, HandlerSettings(release_cache_above_tokens=0))  # 0: never
    assert released == [True]


def test_a_gpu_worker_caps_its_allocator_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, str(d))))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        assert device.select(1, HandlerSettings(gpu_memory_fraction=0.25)) == torch.device("cuda:1")
        assert calls == [(0.25, "cuda:1")]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        device.select(0, HandlerSettings())  # 0: no cap
        assert len(calls) == 1
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    monkeypatch.undo()
    assert device.select(None, HandlerSettings()) == torch.device("cpu")
