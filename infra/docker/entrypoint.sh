#!/usr/bin/env bash
# Entrypoint of the gliclass-dist image.
#
#   ray-classify ARGS    python /opt/gliclass-dist/jobs/ray_classify.py ARGS   (local Ray, or RAY_ADDRESS)
#   spark-classify ARGS  spark-submit /opt/gliclass-dist/jobs/spark_classify.py ARGS
#   spark-stream ARGS    spark-submit /opt/gliclass-dist/jobs/spark_stream.py ARGS
#   driver ... / executor  what Spark on Kubernetes runs in its driver and executor pods
#   anything else        run as given (gliclass-dist ..., ray start ..., python ..., bash)
#
# KubeRay replaces the entrypoint with its own `ray start` command, so Ray pods never come here.
set -euo pipefail

JOBS_DIR="${GLICLASS_JOBS_DIR:-/opt/gliclass-dist/jobs}"
SPARK_HOME="${SPARK_HOME:-/opt/spark}"

spark_classpath() {
  local cp="${SPARK_HOME}/jars/*"
  if [ -n "${SPARK_CONF_DIR:-}" ]; then cp="${SPARK_CONF_DIR}:${cp}"; fi
  if [ -n "${HADOOP_CONF_DIR:-}" ]; then cp="${HADOOP_CONF_DIR}:${cp}"; fi
  if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then cp="${cp}:${SPARK_EXTRA_CLASSPATH}"; fi
  echo "${cp}"
}

case "${1:-}" in
  ray-classify)
    shift
    exec python "${JOBS_DIR}/ray_classify.py" "$@"
    ;;
  spark-classify)
    shift
    exec "${SPARK_HOME}/bin/spark-submit" "${JOBS_DIR}/spark_classify.py" "$@"
    ;;
  spark-stream)
    shift
    exec "${SPARK_HOME}/bin/spark-submit" "${JOBS_DIR}/spark_stream.py" "$@"
    ;;
  driver)
    # Spark on Kubernetes, driver pod: Spark passes --properties-file, --class and the application.
    shift
    cd /opt/spark/work-dir
    exec "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client \
      "$@"
    ;;
  executor)
    # Spark on Kubernetes, executor pod: everything comes in SPARK_* variables set by the driver.
    shift
    cd /opt/spark/work-dir
    mapfile -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/^[^=]*=//')
    exec "${JAVA_HOME:+${JAVA_HOME}/bin/}java" \
      "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "$(spark_classpath)" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" \
      --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
      --podName "${SPARK_EXECUTOR_POD_NAME}"
    ;;
  "")
    exec gliclass-dist --help
    ;;
  *)
    exec "$@"
    ;;
esac
