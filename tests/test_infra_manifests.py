"""Deployment artefacts in infra/ stay valid and in step with the code they deploy.

Every YAML parses; every job spec in them is a valid ``JobSpec``; every entrypoint, argument and path
in the manifests, the Dockerfile, the image entrypoint and the Airflow DAG names a file in ``jobs/``
and an option that file really accepts (checked by running ``--help``); versions agree between the
Dockerfile and the manifests; the RayService's Serve config builds. KubeRay and Spark Operator CRD
schemas are not shipped by any package reachable here, so the structure is checked by hand below;
set ``KUBERAY_CRD_DIR`` / ``SPARK_OPERATOR_CRD_DIR`` (folders holding the operators' CRD YAMLs, e.g.
``ray-operator/config/crd/bases`` of KubeRay) to also validate against the real OpenAPI schemas.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gliclass_dist.spec import JobSpec
from gliclass_dist.spec import apply_override as spec_apply_override

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
IMAGE_ROOT = "/opt/gliclass-dist"  # WORKDIR of infra/docker/Dockerfile
DAGS_DIR = INFRA / "airflow" / "dags"
EXAMPLE_SPEC = INFRA / "specs" / "news-topics.yaml"

if str(DAGS_DIR) not in sys.path:
    sys.path.insert(0, str(DAGS_DIR))

from gliclass_airflow import jobspec as dag_jobspec  # noqa: E402
from gliclass_airflow import ray_jobs as dag_ray_jobs  # noqa: E402


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in _yaml_files() for d in _docs(p) if isinstance(d, dict) and d.get("kind") == kind]


def _dockerfile() -> str:
    return (INFRA / "docker" / "Dockerfile").read_text()


def _docker_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(.*)$", _dockerfile(), flags=re.M))


def _image_path_to_repo(path: str) -> Path:
    """``/opt/gliclass-dist/jobs/x.py`` (or ``local://...``) in the image -> ``<repo>/jobs/x.py``."""
    path = path.removeprefix("local://")
    assert path.startswith(IMAGE_ROOT + "/"), f"{path} is not under the image's {IMAGE_ROOT}"
    return REPO / path[len(IMAGE_ROOT) + 1 :]


def _help_options(script: Path) -> set[str]:
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def _ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for _, d in _manifests("RayJob")]
    specs += [(f"RayCluster {d['metadata']['name']}", d["spec"]) for _, d in _manifests("RayCluster")]
    specs += [(f"RayService {d['metadata']['name']}", d["spec"]["rayClusterConfig"]) for _, d in _manifests("RayService")]
    return specs


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def _gpus(container: dict[str, Any], section: str = "limits") -> int:
    return int(container.get("resources", {}).get(section, {}).get("nvidia.com/gpu", 0))


def _job_spec_configmaps() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path, doc in _manifests("ConfigMap"):
        for key, text in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                out.append((f"{path.name}:{doc['metadata']['name']}/{key}", yaml.safe_load(text)))
    return out


# --------------------------------------------------------------------------- parsing


def test_every_yaml_parses_and_manifests_have_kind_and_name() -> None:
    files = _yaml_files()
    assert len(files) >= 6
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        if path.parent.name in {"kuberay", "spark"}:
            for doc in docs:
                assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a manifest without apiVersion/kind"
                if doc["kind"] != "Pod":  # pod templates have no name
                    assert doc["metadata"]["name"], f"{path}: {doc['kind']} without a name"


def test_example_spec_and_configmap_specs_are_valid_job_specs() -> None:
    canonical = yaml.safe_load(EXAMPLE_SPEC.read_text())
    JobSpec.from_yaml(EXAMPLE_SPEC)
    embedded = _job_spec_configmaps()
    assert len(embedded) >= 2
    for where, data in embedded:
        JobSpec.from_dict(data)  # raises SpecError naming the key
        assert data == canonical, f"{where} drifted from {EXAMPLE_SPEC.relative_to(REPO)}"


# --------------------------------------------------------------------------- entrypoints -> jobs/


def _commands() -> list[tuple[str, str, list[str]]]:
    """(where, script path in the image, arguments) for every way the infra starts a job."""
    found: list[tuple[str, str, list[str]]] = []
    for path, doc in _manifests("RayJob"):
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "python", f"{path}: the RayJob entrypoint should run python, got {argv[0]}"
        found.append((f"{path.name} RayJob", argv[1], argv[2:]))
    for path, doc in _manifests("SparkApplication"):
        found.append((f"{path.name} SparkApplication", doc["spec"]["mainApplicationFile"], doc["spec"]["arguments"]))
    script = (INFRA / "spark" / "spark-submit-k8s.sh").read_text()
    argv = shlex.split(script.split("exec spark-submit", 1)[1].replace("\\\n", " "), comments=True)
    app = next(i for i, a in enumerate(argv) if a.startswith("local://"))
    found.append(("spark-submit-k8s.sh", argv[app], [a for a in argv[app + 1 :] if a != "$@"]))
    return found


def test_manifest_entrypoints_name_real_jobs_and_options() -> None:
    commands = _commands()
    assert {Path(script).name for _, script, _ in commands} >= {"ray_classify.py", "spark_classify.py"}
    help_cache: dict[Path, set[str]] = {}
    for where, script, args in commands:
        local = _image_path_to_repo(script)
        assert local.is_file(), f"{where}: {script} -> {local.relative_to(REPO)} does not exist"
        options = help_cache.setdefault(local, _help_options(local))
        used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        assert used <= options, f"{where}: {sorted(used - options)} are not options of {local.name}"
        assert "--spec" in used, f"{where}: no --spec"
        # The spec it reads is the ConfigMap's, mounted at /etc/gliclass; its --set overrides must apply.
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        JobSpec.from_yaml(EXAMPLE_SPEC, overrides)


def test_image_entrypoint_dispatches_to_real_jobs(tmp_path: Path) -> None:
    entrypoint = INFRA / "docker" / "entrypoint.sh"
    text = entrypoint.read_text()
    referenced = set(re.findall(r"\$\{JOBS_DIR\}/([\w.]+\.py)", text))
    assert {"ray_classify.py", "spark_classify.py"} <= referenced
    for name in referenced:
        assert (REPO / "jobs" / name).is_file(), f"entrypoint.sh runs jobs/{name}, which does not exist"
    # Run it for real: `ray-classify --help` must reach jobs/ray_classify.py's own argument parser.
    env = {**os.environ, "GLICLASS_JOBS_DIR": str(REPO / "jobs"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(entrypoint), "ray-classify", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--summary-json" in out.stdout
    out = subprocess.run(["bash", str(entrypoint), "echo", "passthrough"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "passthrough"


def test_streaming_job_for_the_image_entrypoint_parses_its_arguments() -> None:
    assert "--spec" in _help_options(REPO / "jobs" / "spark_stream.py")  # `spark-stream` in entrypoint.sh


def test_gpu_discovery_script_prints_spark_resource_json(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(INFRA / "docker" / "gpu-discovery.sh")], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def _module_constants(path: Path) -> dict[str, Any]:
    """Module-level ``NAME = <literal>`` assignments of a file, without importing it (no Airflow here)."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def test_airflow_dag_submits_real_jobs_with_real_options() -> None:
    dag = _module_constants(DAGS_DIR / "gliclass_classify.py")
    assert dag["IMAGE_JOBS_DIR"] == f"{IMAGE_ROOT}/jobs"
    spark_script = REPO / "jobs" / dag["SPARK_JOB_SCRIPT"]
    assert spark_script.is_file()
    assert {"--spec", "--summary-json"} <= _help_options(spark_script)
    argv = shlex.split(dag_ray_jobs.build_entrypoint("python", dag["IMAGE_JOBS_DIR"]).split("&&")[0])
    ray_script = _image_path_to_repo(argv[1])
    assert ray_script.is_file()
    assert {a for a in argv[2:] if a.startswith("--")} <= _help_options(ray_script)


@pytest.mark.parametrize(
    "item", ["sink.path=/x", "resources.max_actors=4", "labels.labels=[a, b]", "a.b.c=true", "model.dtype='float16'"]
)
def test_dag_overrides_match_the_jobs_set_semantics(item: str) -> None:
    base = yaml.safe_load(EXAMPLE_SPEC.read_text())
    ours, theirs = json.loads(json.dumps(base)), json.loads(json.dumps(base))
    dag_jobspec.apply_override(ours, item)
    spec_apply_override(theirs, item)
    assert ours == theirs


# --------------------------------------------------------------------------- image <-> manifests


def test_dockerfile_sources_versions_and_paths() -> None:
    text = _dockerfile()
    args = _docker_args()
    for src in re.findall(r"^COPY (?!--)(\S+(?: \S+)*) \S+$", text, flags=re.M):
        for item in src.split():
            assert (REPO / item).exists(), f"Dockerfile copies {item}, which is not in the repository"
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for src in re.findall(r"^COPY (?!--)(\S+(?: \S+)*) \S+$", text, flags=re.M):
        for item in src.split():
            assert item.rstrip("/") in allowed or any(item.startswith(a + "/") for a in allowed), (
                f"{item} is excluded from the build context by Dockerfile.dockerignore"
            )
    assert re.search(r"^WORKDIR /opt/gliclass-dist$", text, flags=re.M)
    assert re.search(r"^COPY jobs \./jobs$", text, flags=re.M)

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for extra in args["EXTRAS"].split(","):
        assert extra in extras, f"Dockerfile installs extra {extra!r}, which pyproject.toml does not define"
    from packaging.requirements import Requirement

    ray_req = next(Requirement(r) for r in extras["ray"] if Requirement(r).name == "ray")
    assert ray_req.specifier.contains(args["RAY_VERSION"]), f"RAY_VERSION {args['RAY_VERSION']} vs {ray_req}"
    torch_req = next(Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "torch")
    assert torch_req.specifier.contains(args["TORCH_VERSION"])
    for where, cluster in _ray_cluster_specs():
        assert cluster["rayVersion"] == args["RAY_VERSION"], f"{where}: rayVersion != Dockerfile RAY_VERSION"
    for path, doc in _manifests("SparkApplication"):
        assert doc["spec"]["sparkVersion"] == args["PYSPARK_VERSION"], f"{path}: sparkVersion != PYSPARK_VERSION"

    # The baked-in model folder is what the specs and the Serve config point at.
    assert "local_dir='/models/gliclass'" in text
    assert yaml.safe_load(EXAMPLE_SPEC.read_text())["model"]["ref"] == "/models/gliclass"
    # The GPU discovery script the Spark settings name is the one the image installs.
    assert "COPY infra/docker/gpu-discovery.sh /opt/gliclass-dist/bin/gpu-discovery.sh" in text


def test_every_pod_uses_the_project_image() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    expected = f"gliclass-dist:{version}"
    images = []
    for _, cluster in _ray_cluster_specs():
        for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
            images += [c["image"] for c in _containers(group["template"])]
    images += [d["spec"]["image"] for _, d in _manifests("SparkApplication")]
    assert images and set(images) == {expected}, f"images {set(images)} != {expected}"
    assert f'IMAGE="${{IMAGE:-{expected}}}"' in (INFRA / "spark" / "spark-submit-k8s.sh").read_text()


# --------------------------------------------------------------------------- KubeRay structure


def test_kuberay_clusters_have_cpu_heads_and_autoscaled_gpu_workers() -> None:
    clusters = _ray_cluster_specs()
    assert {w.split()[0] for w, _ in clusters} == {"RayJob", "RayCluster", "RayService"}
    for where, cluster in clusters:
        assert cluster.get("enableInTreeAutoscaling") is True, f"{where}: autoscaling off"
        head = cluster["headGroupSpec"]
        assert str(head["rayStartParams"].get("num-cpus")) == "0", f"{where}: work would land on the head"
        assert all(_gpus(c) == 0 for c in _containers(head["template"])), f"{where}: the head asks for a GPU"
        gpu_groups = [g for g in cluster["workerGroupSpecs"] if any(_gpus(c) for c in _containers(g["template"]))]
        assert gpu_groups, f"{where}: no GPU worker group"
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], (
                f"{where}/{group['groupName']}: replicas outside [minReplicas, maxReplicas]"
            )
            assert group["maxReplicas"] >= 1
            for c in _containers(group["template"]):
                assert _gpus(c, "limits") == _gpus(c, "requests"), f"{where}: GPU requests != limits"
        for group in gpu_groups:
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{where}: GPU taint not tolerated"


def test_rayjob_runs_the_batch_job_and_cleans_up() -> None:
    (path, job), *_ = _manifests("RayJob")
    spec = job["spec"]
    assert spec["entrypointNumGpus"] == 0
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    # The spec file the entrypoint reads is mounted on the head (where the driver runs).
    spec_path = shlex.split(spec["entrypoint"])[shlex.split(spec["entrypoint"]).index("--spec") + 1]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for c in head["containers"] for m in c.get("volumeMounts", []) if spec_path.startswith(m["mountPath"]))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    configmaps = {d["metadata"]["name"]: d for _, d in _manifests("ConfigMap")}
    assert Path(spec_path).name in configmaps[volume["configMap"]["name"]]["data"]
    # The job's GPU actors fit in what the GPU group can scale to.
    job_spec = JobSpec.from_dict(yaml.safe_load(configmaps[volume["configMap"]["name"]]["data"]["job.yaml"]))
    gpu_capacity = sum(
        g["maxReplicas"] * max(_gpus(c) for c in _containers(g["template"]))
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
    )
    assert job_spec.resources.max_actors * job_spec.resources.gpus_per_actor <= gpu_capacity


def test_rayservice_serve_config_builds_the_real_application() -> None:
    (path, service), *_ = _manifests("RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module_name, attr = app["import_path"].split(":")
    import importlib

    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), f"{app['import_path']} is not callable"
    settings = module.ServeArgs.model_validate(app["args"])  # unknown keys rejected
    assert settings.num_gpus >= 1 and settings.require_auth
    # The token the replicas need comes from a secret on the pods that run them (the GPU workers).
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    env_names = {e["name"] for g in workers for c in _containers(g["template"]) for e in c.get("env", [])}
    assert settings.token_env in env_names


# --------------------------------------------------------------------------- Spark structure


def test_spark_application_gpu_settings_fit_the_stage_profile() -> None:
    (path, app), *_ = _manifests("SparkApplication")
    spec = app["spec"]
    conf = spec["sparkConf"]
    assert spec["mode"] == "cluster" and spec["type"] == "Python"
    assert spec["executor"]["gpu"] == {"name": "nvidia.com/gpu", "quantity": int(conf["spark.executor.resource.gpu.amount"])}
    assert conf["spark.executor.resource.gpu.vendor"] == "nvidia.com"
    assert conf["spark.executor.resource.gpu.discoveryScript"] == f"{IMAGE_ROOT}/bin/gpu-discovery.sh"
    assert conf["spark.dynamicAllocation.enabled"] == "false"  # task-level profile on GPU executors
    # Every GPU share of an executor can run at once: (1 / gpus_per_task) tasks x cpus_per_task cores.
    args = spec["arguments"]
    job = JobSpec.from_yaml(EXAMPLE_SPEC, [args[i + 1] for i, a in enumerate(args) if a == "--set"])
    gpus = int(conf["spark.executor.resource.gpu.amount"])
    tasks_per_executor = gpus / job.resources.gpus_per_actor
    assert tasks_per_executor == int(tasks_per_executor)
    assert tasks_per_executor * job.resources.cpus_per_actor <= spec["executor"]["cores"]
    # The spec volume is mounted on the driver.
    mounts = {m["name"]: m["mountPath"] for m in spec["driver"]["volumeMounts"]}
    assert any(args[args.index("--spec") + 1].startswith(p) for p in mounts.values())


def test_spark_submit_script_matches_the_spark_application() -> None:
    script = (INFRA / "spark" / "spark-submit-k8s.sh").read_text()
    (path, app), *_ = _manifests("SparkApplication")
    for key, value in app["spec"]["sparkConf"].items():
        if key.startswith(("spark.executor.resource", "spark.dynamicAllocation", "spark.task.cpus")):
            assert f"--conf {key}={value}" in script, f"spark-submit-k8s.sh lacks --conf {key}={value}"
    for name in ("driver-pod-template.yaml", "executor-pod-template.yaml"):
        assert name in script and (INFRA / "spark" / name).is_file()


# --------------------------------------------------------------------------- CRD schemas (optional)


def _crd_schemas(folder: str) -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in Path(folder).glob("*.yaml"):
        for crd in _docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize(
    ("env_var", "kinds"),
    [("KUBERAY_CRD_DIR", ("RayJob", "RayCluster", "RayService")), ("SPARK_OPERATOR_CRD_DIR", ("SparkApplication",))],
)
def test_manifests_validate_against_operator_crds(env_var: str, kinds: tuple[str, ...]) -> None:
    folder = os.environ.get(env_var)
    if not folder:
        pytest.skip(f"{env_var} not set: no CRD schemas offline (the hand-written structure checks still ran)")
    import jsonschema

    schemas = _crd_schemas(folder)
    checked = 0
    for kind in kinds:
        for path, doc in _manifests(kind):
            schema = schemas[(doc["apiVersion"], kind)]
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
            assert not errors, f"{path.name} {kind}: " + "; ".join(
                f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]
            )
            checked += 1
    assert checked >= len(kinds)
