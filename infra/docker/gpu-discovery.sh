#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript): prints the GPUs this
# container sees as {"name": "gpu", "addresses": ["0", "1", ...]}. nvidia-smi comes with the NVIDIA
# container runtime when the pod requests nvidia.com/gpu.
set -euo pipefail
addresses="$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/[[:space:]]//g' -e 's/.*/"&"/' | paste -sd, -)"
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
