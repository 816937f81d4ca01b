"""The benchmarks' shared results writer: one JSON file per run, saying what ran where. (Not named
bench_results: that is the folder the files go to, which tools such as ruff would take for the module.)

Every file holds ``schema``, ``benchmark``, the exact ``command`` (and its ``argv``), ``machine``
(CPU, cores, torch, threads, load average and ``uptime`` at the start, git commit, GPU and TF32 on
CUDA), ``inputs`` and the benchmark's own sections. Files written before this module (schema 1,
``scripts/bench.py`` of issue 5, the ``docs/bench-*.json``) have the same ``command``, ``machine``
and ``inputs`` keys; ``load`` reads both and names the old ones' benchmark from their sections.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench_results"
SCHEMA = 2
# Schema-1 files held every benchmark's sections; the first non-empty one names what ran.
_OLD_SECTIONS = (("in_process", "engines"), ("serve", "served"), ("handler_workers", "workers"))


def command_line(argv: list[str] | None = None, script: str | None = None) -> str:
    """The command as typed: ``python scripts/<script> <args>``, shell-quoted."""
    script = script or sys.argv[0]
    path = (REPO / script).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else Path(script)
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", str(shown), *args])


def uptime() -> str:
    """``uptime``'s line (the load averages of the shared machine), or /proc/loadavg without it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), flags=re.M)
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """Where the run happened. Call it before the benchmark's own work: the load average is then
    other people's, which is what a reader needs to judge a figure from a shared machine."""
    import torch

    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "uptime_at_start": uptime(),
        "python": platform.python_version(),
        "device": device,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    return info


def default_path(benchmark: str, device: str = "cpu") -> Path:
    return RESULTS / f"{benchmark}-{device.replace(':', '')}.json"


def write(path: Path, benchmark: str, command: str, machine: dict, inputs: dict, **sections) -> Path:
    """Write one run's results; ``sections`` are the benchmark's own (lists of rows, summaries).
    The machine record gains ``uptime_at_end``: with the start's, it brackets the load of the run."""
    machine = {**machine, "uptime_at_end": uptime()}
    report = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "command": command,
        "argv": shlex.split(command),
        "machine": machine,
        "inputs": inputs,
        **sections,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def load(path: Path) -> dict:
    """A results file of either schema, with ``schema`` and ``benchmark`` always set."""
    report = json.loads(Path(path).read_text())
    if "schema" not in report:
        report["schema"] = 1
        ran = [name for key, name in _OLD_SECTIONS if report.get(key)]
        report["benchmark"] = "+".join(ran) or "none"
    missing = {"command", "machine", "inputs"} - set(report)
    if missing:
        raise ValueError(f"{path}: not a benchmark result (lacks {', '.join(sorted(missing))})")
    return report


def markdown(rows: list[dict], columns: dict[str, str]) -> str:
    """A markdown table of ``rows``; ``columns`` maps each row key to its heading. Floats get
    thousands separators and one decimal, or three significant digits below 1."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 1 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines)
