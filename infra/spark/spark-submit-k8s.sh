#!/usr/bin/env bash
# The Spark batch job on Kubernetes with plain spark-submit (no operator), the same settings as
# sparkapplication-classify.yaml. Run it where spark-submit and a kubeconfig are (e.g. the image:
#   docker run --rm -v ~/.kube:/home/app/.kube gliclass-dist:0.1.0 bash /opt/gliclass-dist/infra/spark/spark-submit-k8s.sh).
# The pod templates mount the job spec ConfigMap (kubectl apply -f sparkapplication-classify.yaml
# creates it; or: kubectl create configmap gliclass-spark-job-spec --from-file=job.yaml=infra/specs/news-topics.yaml).
#
# Environment: K8S_API (https://host:port of the API server), NAMESPACE, IMAGE, SERVICE_ACCOUNT.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_API="${K8S_API:-https://kubernetes.default.svc:443}"
NAMESPACE="${NAMESPACE:-default}"
IMAGE="${IMAGE:-gliclass-dist:0.1.0}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-spark-operator-spark}"
EXECUTORS="${EXECUTORS:-2}"

exec spark-submit \
  --master "k8s://${K8S_API}" \
  --deploy-mode cluster \
  --name gliclass-classify \
  --conf spark.kubernetes.namespace="${NAMESPACE}" \
  --conf spark.kubernetes.container.image="${IMAGE}" \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName="${SERVICE_ACCOUNT}" \
  --conf spark.kubernetes.driver.podTemplateFile="${HERE}/driver-pod-template.yaml" \
  --conf spark.kubernetes.executor.podTemplateFile="${HERE}/executor-pod-template.yaml" \
  --conf spark.kubernetes.pyspark.pythonVersion=3 \
  --conf spark.pyspark.python=/opt/venv/bin/python \
  --conf spark.driver.cores=2 \
  --conf spark.driver.memory=8g \
  --conf spark.executor.instances="${EXECUTORS}" \
  --conf spark.executor.cores=8 \
  --conf spark.executor.memory=24g \
  --conf spark.executor.memoryOverhead=4g \
  --conf spark.executor.resource.gpu.amount=1 \
  --conf spark.executor.resource.gpu.vendor=nvidia.com \
  --conf spark.executor.resource.gpu.discoveryScript=/opt/gliclass-dist/bin/gpu-discovery.sh \
  --conf spark.dynamicAllocation.enabled=false \
  --conf spark.task.cpus=1 \
  --conf spark.sql.execution.arrow.maxRecordsPerBatch=1024 \
  --conf spark.executorEnv.TOKENIZERS_PARALLELISM=false \
  local:///opt/gliclass-dist/jobs/spark_classify.py \
  --spec /etc/gliclass/job.yaml \
  --set resources.gpus_per_actor=0.25 \
  --set resources.cpus_per_actor=2 \
  --delta-writer delta-rs \
  --no-ship-model \
  "$@"
