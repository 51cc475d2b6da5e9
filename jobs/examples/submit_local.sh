#!/usr/bin/env bash
# Submit jobs/ray_classify.py to a local single-node Ray cluster with `ray job submit`, then stop that cluster.
#
#   jobs/examples/submit_local.sh [spec.yaml]     (default: jobs/examples/parquet_to_delta.yaml; run `make demo`
#                                                  first so that data/bbc and models/gliclass-minilm-bbc exist)
#
# The cluster runs in its own temp dir and is stopped by the PID of its `ray start --block` process group:
# never `ray stop`, which would end every Ray on the machine. tests/test_ray_cluster.py does the same in a test.
set -euo pipefail
cd "$(dirname "$0")/../.."
SPEC="${1:-jobs/examples/parquet_to_delta.yaml}"
OVERRIDES=()
if [ $# -eq 0 ]; then
  # The job runs in an uploaded copy of the checkout that lacks the git-ignored data/, models/ and lakehouse/:
  # point the example's relative paths at this checkout.
  OVERRIDES=(--set "input.path=$(pwd)/data/bbc/bbc.parquet" --set "model.ref=$(pwd)/models/gliclass-minilm-bbc"
             --set "sink.path=$(pwd)/lakehouse/bbc_topics_example")
fi
VENV_BIN="$(pwd)/.venv/bin"
TMP="$(mktemp -d /tmp/gliclass-ray-XXXXXX)"
free_port() { "$VENV_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GCS_PORT="$(free_port)"; DASHBOARD_PORT="$(free_port)"

export PATH="$VENV_BIN:$PATH" RAY_TMPDIR="$TMP" RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
setsid "$VENV_BIN/ray" start --head --block --port="$GCS_PORT" --node-ip-address=127.0.0.1 \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
  --temp-dir="$TMP" --disable-usage-stats >"$TMP/ray-start.log" 2>&1 &
HEAD_PID=$!
stop_cluster() { kill -TERM -- "-$HEAD_PID" 2>/dev/null || true; wait "$HEAD_PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap stop_cluster EXIT

ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
for _ in $(seq 90); do  # wait for the Jobs API
  "$VENV_BIN/ray" job list --address "$ADDRESS" >/dev/null 2>&1 && break
  kill -0 "$HEAD_PID" 2>/dev/null || { cat "$TMP/ray-start.log"; exit 1; }
  sleep 2
done

"$VENV_BIN/ray" job submit --address "$ADDRESS" --working-dir . -- \
  python jobs/ray_classify.py --spec "$SPEC" "${OVERRIDES[@]}" --summary-json "$TMP/summary.json"
cat "$TMP/summary.json"
