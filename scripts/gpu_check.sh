#!/usr/bin/env bash
# usage: scripts/gpu_check.sh prepare   # here, with the venv and network: wheels + reviews into .whl/
#        scripts/gpu_check.sh run       # on a lent GPU machine, in ONE call (python 3.12, torch CUDA, no network)
#        scripts/gpu_check.sh check     # there too: only the handler on GPU vs CPU (step 1 of run)
#        scripts/gpu_check.sh workers   # there too: N handler processes sharing the GPU (WORKERS="1 4 8 15")
#
# The GPU machine has Python 3.12 and a CUDA torch but no Java, captum, spaCy or TorchServe, and no
# network. `prepare` therefore downloads, here, cp312 manylinux wheels of exactly the distributions
# (and versions) the handler and the benchmark import in this venv -- found by importing them, not
# by a hand-kept list -- minus torch and what torch itself brings:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl captum==... spacy==... torchserve==... ...
#
# The device call carries ignored paths up to 64 MiB in all; the wheels are ~100 MiB as downloaded
# (spaCy + blis + thinc ~54, numpy ~17, matplotlib and its deps ~24: captum.attr imports matplotlib).
# So `prepare` slims them where that is safe -- TorchServe's Java frontend (44 MB jar; only the
# `ts` Python package runs there), test suites, matplotlib's sample data -- and recompresses every
# wheel with LZMA (a valid zip method; pip extracts it): ~74 MiB. Distributions the GPU machine
# already has are left out (the list below, from the device tool's KINDS.md); SKIP_WHEELS="..." adds more (check with one short call:
# python3 -c 'import numpy, PIL, yaml'); `prepare` warns while the total is above the carry limit.
# The IMDB tarball is not carried either: `prepare` stores the benchmark's 256-token reviews
# (200..300 tokens, seeded) as .whl/reviews-256.tsv.
#
# `run` installs them with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, then
#   1. runs the real handler in-process -- ts.context.Context(gpu=0), a RequestProcessor per row with
#      the header explain="True" -- on the GPU and on the CPU, and checks logits and attributions
#      agree within 1e-5 relative (predictions too);
#   2. runs `scripts/bench.py --device cuda` (TF32 off, synchronised timing, 64..1024 reviews per
#      call) and prints its table; JSON goes to $OUT (the run tool brings it back) or bench_results/;
#   3. times the served configuration (exact) at 1,024..4,096 reviews per call and chunk budgets,
#      with peak GPU memory and a CUDA profile.
# `workers` runs the whole handler (spaCy included) in 1..N processes sharing the GPU.
# Device call, e.g.: run(command="scripts/gpu_check.sh run", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
WHL=.whl
VENV_PY=.venv/bin/python
PY=${PYTHON:-python3}
REVIEWS=$WHL/reviews-256.tsv
N_REVIEWS=${N_REVIEWS:-4096}
MAX_MIB=60

prepare() {
    mkdir -p "$WHL"
    # Distributions imported by the handler, the tokenizer, ts.context and the benchmark, pinned.
    mapfile -t pins < <("$VENV_PY" - <<'EOF'
import importlib.metadata as md, os, sys
sys.path[:0] = [".", "scripts"]
before = set(sys.modules)
import captum.attr, ts.context, yaml  # noqa: F401  (handler deps, also imported lazily by TorchServe)
import handler.sentiment_handler, bench  # noqa: F401
from handler.text import tokenize
tokenize(["warm <br /> up"])
tops = {m.split(".")[0] for m in set(sys.modules) - before} - {"handler", "bench", "imdb_data"}  # ours travel as files
dists = {d for t in tops for d in md.packages_distributions().get(t, [])}
# torch and its own requirements are on the GPU machine already, and so are these (the device
# tool's KINDS.md lists the image's packages, read 2026-11-17): carrying them would pass 64 MiB.
skip = {"torch", "triton", "sympy", "mpmath", "networkx", "filelock", "fsspec", "jinja2", "markupsafe", "setuptools",
        "numpy", "matplotlib", "pillow", "fonttools", "kiwisolver", "cycler", "pyparsing", "python-dateutil",
        "contourpy", "packaging", "pyyaml", "requests", "urllib3", "certifi", "charset-normalizer", "idna",
        "rich", "pygments", "markdown-it-py", "mdurl", "safetensors", "psutil", "click", "shellingham", "typer",
        "httpx", "httpcore", "h11", "anyio", "tqdm", "typing-extensions", "annotated-doc", "wrapt", "six"}
skip |= {s.lower() for s in os.environ.get("SKIP_WHEELS", "").split()}
for d in sorted(dists, key=str.lower):
    if d.lower() not in skip and not d.lower().startswith("nvidia"):
        print(f"{d}=={md.version(d)}")
EOF
)
    echo "wheels for: ${pins[*]}"
    rm -f "$WHL"/*.whl
    "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$WHL" "${pins[@]}"
    for w in "$WHL"/*.whl; do
        slim "$w" ts/frontend/ spacy/tests/ numpy/_core/tests/ numpy/tests/ matplotlib/tests/ \
            matplotlib/mpl-data/sample_data/
    done
    # The benchmark's reviews, selected here exactly as bench.py would from the tarball.
    "$VENV_PY" - "$REVIEWS" "$N_REVIEWS" <<'EOF'
import sys
sys.path[:0] = [".", "scripts"]
from bench import pick_reviews
# 64 spare reviews: tokenizing the whitespace-folded text could move one out of 200..300 tokens
texts, _ = pick_reviews(None, int(sys.argv[2]) + 64, 0, "256")
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.writelines("pos\t" + " ".join(t.split()) + "\n" for t in texts)  # labels are not used
EOF
    size=$(du -sm "$WHL" | cut -f1)
    echo "$WHL: $(ls "$WHL"/*.whl | wc -l) wheels + $(wc -l < "$REVIEWS") reviews, ${size} MiB"
    if [ "$size" -gt "$MAX_MIB" ]; then
        echo "warning: over ${MAX_MIB} MiB; the device call carries at most 64 MiB" >&2
    fi
}

slim() {  # slim WHEEL PREFIX...: drop files under the prefixes (and their RECORD lines), recompress with LZMA
    "$VENV_PY" - "$@" <<'EOF'
import os, sys, zipfile
path, prefixes = sys.argv[1], tuple(sys.argv[2:])
tmp = path + ".tmp"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
    for item in src.infolist():
        if item.filename.startswith(prefixes):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not l.decode().startswith(prefixes))
        item.compress_type = zipfile.ZIP_LZMA
        dst.writestr(item, data)
os.replace(tmp, path)
EOF
}

install() {
    [ -d "$WHL" ] || { echo "no $WHL/: run 'scripts/gpu_check.sh prepare' first and carry .whl" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "$WHL"/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    out=${OUT:-bench_results}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
}

workers() {  # N handler processes sharing the GPU, as N TorchServe workers would
    install
    "$PY" scripts/bench.py --device cuda --serve-only --workers ${WORKERS:-1 4 8 15} --data "$REVIEWS" \
        --n 2048 --out "$out/bench-cuda-workers.json"
}

run() {
    check
    bench
}

check() {
    install
    "$PY" - "$REVIEWS" <<'EOF'
"""The real handler, in-process, on cuda:0 and on the CPU: same answers within 1e-5 relative."""
import sys
from pathlib import Path
import torch
from handler.inprocess import answer, local_handler

assert torch.cuda.is_available(), "no CUDA device"
texts = [line.split("\t", 1)[1] for line in open(sys.argv[1], encoding="utf-8")][:12]
texts += ["A fine film.", "Dull.", "It was a fantastic performance !", "terrible , just terrible"]  # 7..300 tokens

def answers(gpu, explain):
    h, ctx = local_handler(Path("model_store/artifacts"), batch_size=len(texts), gpu_id=gpu)
    return str(h.device), answer(h, ctx, texts, explain)

worst = 0.0
for explain in (False, True):
    dev_g, gpu = answers(0, explain)
    dev_c, cpu = answers(None, explain)
    assert dev_g == "cuda:0" and dev_c == "cpu", (dev_g, dev_c)
    for g, c in zip(gpu, cpu):
        assert g["label"] == c["label"], (g, c)
        worst = max(worst, abs(g["logit"] - c["logit"]) / max(abs(c["logit"]), 1e-3))
        if explain:
            assert g["tokens"] == c["tokens"] and g["engine"] == c["engine"], "token or engine mismatch"
            scale = max(max(abs(a) for a in c["attributions"]), 1e-12)
            worst = max(worst, max(abs(a - b) for a, b in zip(g["attributions"], c["attributions"])) / scale)
    print(f"handler explain={explain}: {len(gpu)} answers on {dev_g} vs {dev_c}; worst relative difference so far {worst:.2e}")
print(f"GPU vs CPU worst relative difference (logits, attributions): {worst:.2e}")
assert worst <= 1e-5, f"GPU results differ from CPU by {worst:.2e} > 1e-5"
EOF
}

bench() {
    "$PY" scripts/bench.py --device cuda --data "$REVIEWS" --n "$N_REVIEWS" --out "$out/bench-cuda.json"
    "$PY" - "$REVIEWS" <<'EOF'
"""Where the GPU time goes in the served configuration (exact): reviews per call, chunk budget,
peak GPU memory and a CUDA profile. (The whole handler, spaCy included: `gpu_check.sh workers`.)"""
import sys, time
import torch
from torch.profiler import ProfilerActivity, profile
from handler.attribution import IGSettings, layer_ig
from handler.model import load_model
from handler.text import Vocab, encode, tokenize

torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
model, vocab = load_model("model_store/artifacts", "cuda"), Vocab.load("model_store/artifacts")
texts = [line.split("\t", 1)[1] for line in open(sys.argv[1], encoding="utf-8")][:4096]
batch = encode(tokenize(texts), vocab, 7, 512).to("cuda")

def rate(rows, chunk, n=10):
    ids, lengths, s = batch.ids[:rows], batch.lengths[:rows], IGSettings(method="exact", chunk_elements=chunk)
    layer_ig(model, ids, lengths, s)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(n):
        layer_ig(model, ids, lengths, s)
    torch.cuda.synchronize()
    return n * rows / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30

for rows, chunk in ((1024, 2**29), (2048, 2**28), (2048, 2**29), (4096, 2**29), (4096, 2**30)):
    r, peak = rate(rows, chunk)
    print(f"exact, {rows} reviews/call, chunk_elements 2^{chunk.bit_length() - 1}: {r:,.0f} reviews/s, "
          f"peak GPU memory {peak:.2f} GiB", flush=True)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        layer_ig(model, batch.ids[:2048], batch.lengths[:2048], IGSettings(method="exact", chunk_elements=2**29))
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))

EOF
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    check) check ;;
    workers) workers ;;
    *) sed -n '2,5p' "$0" >&2; exit 2 ;;
esac
