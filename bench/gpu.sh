#!/usr/bin/env bash
# GPU benchmark for a lent GPU machine (no network): engine fp32/bf16 at several token budgets and label
# counts, and the reference pipeline, on random-weight DeBERTa-v3-small/base-shaped GLiClass checkpoints
# built on the spot (bench/gpu_bench.py). Writes $OUT/gpu_bench.json (or bench/results/ without $OUT)
# and $OUT/gpu_env.txt. Finishes in under 5 minutes (gpu_bench.py stops starting new cells at 210 s).
#
# Run from the repository root:   bash bench/gpu.sh
# Python packages: the machine's python3 must have torch (CUDA), transformers, tokenizers, safetensors,
# pyarrow, pyyaml, numpy; pydantic (+ pydantic_core, annotated_types, typing_inspection) and gliclass
# (the reference) are usually missing and travel as wheels in .whl/ (see bench/README.md, "GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "warning: installing the carried wheels failed" >&2
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

python3 - <<'EOF' 2>&1 | tee "$OUT_DIR/gpu_env.txt"
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
missing = []
for name in ("torch", "transformers", "tokenizers", "safetensors", "pyarrow", "yaml", "numpy", "pydantic", "gliclass"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:13s} {getattr(mod, '__version__', '?')}  {getattr(mod, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name:13s} MISSING ({type(exc).__name__}: {exc})")
        missing.append(name)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if set(missing) - {"gliclass"}:
    print("cannot run: missing", missing, "- carry their wheels in .whl/")
    sys.exit(3)
EOF
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then exit "$status"; fi

timeout 290 python3 bench/gpu_bench.py --out "$OUT_DIR/gpu_bench.json" --time-limit-s 210
echo "gpu_bench exit $? ; results in $OUT_DIR/gpu_bench.json"
