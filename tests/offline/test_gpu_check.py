"""scripts/gpu_check.sh's Python, run here on the CPU: the wheel list and slimming, the handler
comparison (device cpu against the CPU, on a tiny model) and the profile's sweep. None of this ran
on a GPU in these tests; the device call runs the same files with --device cuda."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, SCRIPTS, tiny_artifacts

# isort: split
from imdb_bench import gpu_check_handler, gpu_profile, gpu_wheels
from imdb_bench import inputs as bench_inputs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_artifacts(tmp_path_factory.mktemp("tiny_model"), embedding_dim=16, n_filters=8)


@pytest.fixture(scope="module")
def reviews_tsv(tmp_path_factory) -> Path:
    texts = [" ".join(["the plot was bad but the acting great ."] * k) for k in range(1, 17)]
    return bench_inputs.write_tsv(texts, tmp_path_factory.mktemp("data") / "reviews.tsv")


def test_the_shell_script_runs_only_python_files_that_exist() -> None:
    script = (SCRIPTS / "gpu_check.sh").read_text()
    assert "<<" not in script, "no heredoc programs: the Python lives in linted files"
    used = set(re.findall(r"scripts/(\w+\.py)", script))
    assert {"gpu_wheels.py", "gpu_check_handler.py", "gpu_profile.py", "bench_engines.py"} <= used
    assert all((SCRIPTS / name).exists() for name in used), used - {p.name for p in SCRIPTS.glob("*.py")}
    subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_check.sh")], check=True)


def test_the_handler_check_passes_when_both_sides_agree(model_dir: Path, reviews_tsv: Path, capsys) -> None:
    worst = gpu_check_handler.main(["--device", "cpu", "--reviews", str(reviews_tsv), "--artifacts", str(model_dir)])
    assert worst == 0.0  # the same handler on the same CPU
    assert "cpu vs CPU worst relative difference (logits, attributions): 0.00e+00" in capsys.readouterr().out


def answer(label: str, logit: float, attributions: list[float] | None = None) -> dict:
    out = {"label": label, "logit": logit}
    if attributions is not None:
        out |= {"attributions": attributions, "tokens": ["a"] * len(attributions), "engine": "fast"}
    return out


def test_the_handler_check_measures_differences_and_refuses_discrete_ones() -> None:
    cpu = [answer("pos", 2.0, [0.5, -1.0]), answer("neg", -4.0)]
    device = [answer("pos", 2.0, [0.5, -1.0 + 2e-5]), answer("neg", -4.0 + 4e-6)]
    assert gpu_check_handler.worst_difference(device, cpu) == pytest.approx(2e-5)
    with pytest.raises(AssertionError, match="labels differ"):
        gpu_check_handler.worst_difference([answer("neg", 2.0)], [answer("pos", 2.0)])
    with pytest.raises(AssertionError, match="tokens or engine"):
        gpu_check_handler.worst_difference([{**cpu[0], "engine": "captum"}], cpu[:1])


def test_the_handler_check_fails_beyond_its_tolerance(model_dir: Path, monkeypatch) -> None:
    sides = iter([("cpu", [answer("pos", 2.0 + 1e-4)]), ("cpu", [answer("pos", 2.0)])] * 2)
    monkeypatch.setattr(gpu_check_handler, "answers", lambda *args: next(sides))
    assert gpu_check_handler.check(model_dir, ["x"], "cpu", 1e-4) == pytest.approx(5e-5)
    sides = iter([("cpu", [answer("pos", 2.0 + 1e-4)]), ("cpu", [answer("pos", 2.0)])] * 2)
    with pytest.raises(AssertionError, match="differ from CPU by 5.00e-05 > 1e-05"):
        gpu_check_handler.check(model_dir, ["x"], "cpu", 1e-5)


def test_the_handler_check_says_when_there_is_no_gpu(model_dir: Path, reviews_tsv: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check_handler.main(["--device", "cuda", "--reviews", str(reviews_tsv), "--artifacts", str(model_dir)])


def test_the_profile_sweeps_its_plan_and_profiles(model_dir: Path, reviews_tsv: Path, capsys) -> None:
    argv = ["--device", "cpu", "--reviews", str(reviews_tsv), "--artifacts", str(model_dir), "--calls", "2"]
    rows = gpu_profile.main([*argv, "--plan", "4:20", "16:12"])
    assert [(r["rows"], r["chunk_elements"]) for r in rows] == [(4, 2**20), (16, 2**12)]
    assert all(r["reviews_per_s"] > 0 and r["peak_gib"] == 0.0 for r in rows)
    assert "Self CPU time total" in capsys.readouterr().out
    with pytest.raises(ValueError, match="asks for 17 reviews per call"):
        gpu_profile.main([*argv, "--plan", "17:20"])


def make_wheel(path: Path) -> Path:
    record = "pkg/__init__.py,sha256=x,1\npkg/tests/test_a.py,sha256=y,2\npkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/tests/test_a.py", "assert True\n")
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    return path


def test_slimming_drops_the_prefixes_and_their_record_lines_and_recompresses(tmp_path: Path) -> None:
    wheel = gpu_wheels.slim(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"), ("pkg/tests/",))
    with zipfile.ZipFile(wheel) as z:
        assert z.namelist() == ["pkg/__init__.py", "pkg-1.0.dist-info/RECORD"]
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
        assert z.read("pkg/__init__.py") == b"x = 1\n"
        assert z.read("pkg-1.0.dist-info/RECORD") == b"pkg/__init__.py,sha256=x,1\npkg-1.0.dist-info/RECORD,,\n"


def test_pins_keep_this_venvs_versions_of_what_the_device_lacks() -> None:
    import importlib.metadata as md

    dists = {"captum", "torch", "nvidia-cublas-cu12", "PyYAML", "typing_extensions", "spacy"}
    pins = gpu_wheels.pins(dists, gpu_wheels.ON_DEVICE)
    assert pins == [f"captum=={md.version('captum')}", f"spacy=={md.version('spacy')}"]


def test_the_carried_wheels_are_found_by_importing_the_device_side_code() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_wheels.py"), "pins"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    names = {line.split("==")[0].lower() for line in out}
    assert {"captum", "spacy", "torchserve"} <= names
    assert not names & {"torch", "numpy", "pyyaml"}
