"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile, config/*.json,
deploy/k8s/*.yaml and deploy/systemd/*.service.

No Docker, Kubernetes or systemd is needed: the files are parsed and checked against the
interface the code exposes (tiers, `-config`, HARVESTER_* environment overrides, /healthz).
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
SYSTEMD = ROOT / "deploy" / "systemd"

TIERS = {"web_server": "web-server", "foreman": "foreman", "worker": "worker"}
HARVESTER_SERVICES = ("migrate", *TIERS)
CONFIG_DIR_IN_IMAGE = "/etc/harvester/"
ENV_KEYS = ("HARVESTER_DATABASE_URL", "HARVESTER_NATS_URL")

REQUIRED_CONFIG_KEYS = {
    "web_server": {"storage", "urlQueue", "httpAddr"},
    "foreman": {"storage", "urlQueue", "workQueue"},
    "worker": {"storage", "urlQueue", "workQueue"},
}
STORAGE_KEYS = {"user", "pass", "dbname", "host", "port", "sslmode"}
QUEUE_KEYS = {"connURL", "topic"}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE.open() as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), "docker-compose.yml is not a mapping"
    return doc


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def as_argv(command: object) -> list[str]:
    """A compose `command` (list or string) as an argv list."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form: no conditions
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def config_path_in_repo(path_in_image: str) -> Path:
    assert path_in_image.startswith(CONFIG_DIR_IN_IMAGE), path_in_image
    return ROOT / "config" / path_in_image[len(CONFIG_DIR_IN_IMAGE):]


def config_arg(argv: list[str]) -> str:
    assert "-config" in argv, f"no -config in {argv}"
    i = argv.index("-config")
    assert i + 1 < len(argv), f"-config without a value in {argv}"
    return argv[i + 1]


# --------------------------------------------------------------------------- compose


def test_compose_has_all_services(services: dict) -> None:
    for name in ("postgres", "nats", *HARVESTER_SERVICES):
        assert name in services, f"compose service {name!r} missing"


def test_postgres_is_15_or_newer_with_pg_isready_healthcheck(services: dict) -> None:
    pg = services["postgres"]
    image = pg["image"]
    assert image.startswith("postgres:")
    assert int(image.split(":", 1)[1].split(".")[0].split("-")[0]) >= 15
    assert "pg_isready" in " ".join(as_argv(pg["healthcheck"]["test"]))


def test_nats_enables_jetstream_on_a_persistent_volume(compose: dict, services: dict) -> None:
    nats = services["nats"]
    assert nats["image"].startswith("nats:2.")
    argv = as_argv(nats["command"])
    assert "-js" in argv or "--jetstream" in argv, argv
    store = argv[argv.index("-sd") + 1] if "-sd" in argv else argv[argv.index("--store_dir") + 1]
    mounts = [str(v).split(":") for v in nats.get("volumes", [])]
    named = [m for m in mounts if len(m) >= 2 and m[1] == store]
    assert named, f"JetStream store {store} is not on a volume"
    assert named[0][0] in (compose.get("volumes") or {}), "JetStream volume is not a named volume"


def test_postgres_data_on_named_volume(compose: dict, services: dict) -> None:
    mounts = [str(v).split(":") for v in services["postgres"].get("volumes", [])]
    assert any(
        len(m) >= 2 and m[1].startswith("/var/lib/postgresql") and m[0] in (compose.get("volumes") or {})
        for m in mounts
    )


def test_migrate_is_a_one_shot_migrate_command(services: dict) -> None:
    mig = services["migrate"]
    argv = as_argv(mig["command"])
    assert argv[0] == "migrate", argv
    assert config_path_in_repo(config_arg(argv)).is_file()
    assert str(mig.get("restart", "no")) in ("no", "on-failure"), "migrate must not run forever"
    assert depends_on(mig)["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", sorted(TIERS))
def test_tier_waits_for_migrate_and_runs_its_tier(services: dict, service: str) -> None:
    svc = services[service]
    deps = depends_on(svc)
    assert deps.get("migrate", {}).get("condition") == "service_completed_successfully"
    assert deps.get("postgres", {}).get("condition") == "service_healthy"
    assert "nats" in deps
    argv = as_argv(svc["command"])
    assert argv[0] == TIERS[service], argv
    cfg = config_arg(argv)
    assert cfg == f"{CONFIG_DIR_IN_IMAGE}{service}.json"
    assert config_path_in_repo(cfg).is_file()


@pytest.mark.parametrize("service", ["foreman", "worker"])
def test_foreman_and_worker_can_scale(services: dict, service: str) -> None:
    svc = services[service]
    assert "container_name" not in svc
    assert not svc.get("ports")


def test_web_server_publishes_8080_with_healthz_check(services: dict) -> None:
    web = services["web_server"]
    assert any(str(p).endswith("8080:8080") for p in web.get("ports", []))
    assert "/healthz" in " ".join(as_argv(web["healthcheck"]["test"]))


@pytest.mark.parametrize("service", HARVESTER_SERVICES)
def test_harvester_services_build_image_and_get_urls(services: dict, service: str) -> None:
    svc = services[service]
    build = svc["build"]
    assert build["context"] == "."
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    env = env_of(svc)
    for key in ENV_KEYS:
        assert env.get(key), f"{service} lacks {key}"
    assert env["HARVESTER_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["HARVESTER_DATABASE_URL"]
    assert env["HARVESTER_NATS_URL"] == "nats://nats:4222"


@pytest.mark.parametrize("service", TIERS)
def test_tiers_get_a_30s_grace_period_on_sigterm(services: dict, service: str) -> None:
    svc = services[service]
    assert svc.get("stop_grace_period") == "30s"
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_dockerfile_base_user_entrypoint() -> None:
    ins = dockerfile_instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["harvester"]
    cmd = json.loads(dict(ins)["CMD"])
    assert cmd[0] == "web-server" and config_path_in_repo(config_arg(cmd)).is_file()
    runs = " ".join(args for word, args in ins if word == "RUN")
    assert 'pip install --no-cache-dir ".[browser]"' in runs  # playwright: no browser download


def test_dockerfile_installs_debian_chromium_on_request() -> None:
    """``--build-arg BROWSER=1`` adds Debian's chromium (the path browser workers use); the
    default image stays without it."""
    ins = dockerfile_instructions()
    assert ("ARG", "BROWSER=0") in ins
    runs = [args for word, args in ins if word == "RUN"]
    assert any('"$BROWSER" = "1"' in r and "apt-get install -y --no-install-recommends "
               "chromium" in r for r in runs), runs
    env = " ".join(args for word, args in ins if word == "ENV")
    assert "HARVESTER_BROWSER_PATH=/usr/bin/chromium" in env
    assert "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1" in env


def test_dockerfile_copy_sources_exist() -> None:
    copies = [args for word, args in dockerfile_instructions() if word in ("COPY", "ADD")]
    assert copies
    dests = []
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        *sources, dest = parts
        dests.append(dest)
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src!r}, which is not in the repo"
    assert any(d.rstrip("/") == CONFIG_DIR_IN_IMAGE.rstrip("/") for d in dests)


def test_pip_install_dot_has_what_pyproject_needs() -> None:
    """`pip install .` in the image builds the wheel; hatchling refuses a missing readme."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    readme = project.get("readme")
    if isinstance(readme, dict):
        readme = readme.get("file")
    if readme:
        assert (ROOT / readme).is_file(), f"pyproject readme {readme!r} is missing: pip install . fails"


# --------------------------------------------------------------------------- config/*.json


@pytest.mark.parametrize("tier", sorted(REQUIRED_CONFIG_KEYS))
def test_example_configs_have_original_keys(tier: str) -> None:
    cfg = json.loads((ROOT / "config" / f"{tier}.json").read_text())
    assert REQUIRED_CONFIG_KEYS[tier] <= cfg.keys()
    assert STORAGE_KEYS <= cfg["storage"].keys()
    assert cfg["storage"]["host"] == "localhost" and cfg["storage"]["port"] == 5432
    for queue in ("urlQueue", "workQueue"):
        if queue in cfg:
            assert QUEUE_KEYS <= cfg[queue].keys()
            assert cfg[queue]["connURL"] == "nats://localhost:4222"
    if tier == "worker":
        assert cfg["concurrency"] == 32


# --------------------------------------------------------------------------- Kubernetes


def k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open() as f:
            docs.extend((path.name, d) for d in yaml.safe_load_all(f) if d is not None)
    return docs


def k8s_by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def k8s_argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def test_k8s_every_document_has_apiversion_and_kind() -> None:
    docs = k8s_docs()
    names = {name for name, _ in docs}
    for expected in (
        "configmap.yaml", "secret.example.yaml", "web-server.yaml",
        "foreman.yaml", "worker.yaml", "migrate-job.yaml",
    ):
        assert expected in names
    for name, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), name
        assert "namespace" not in doc.get("metadata", {}), f"{name} must be namespace-less"


@pytest.mark.parametrize(
    ("kind", "name", "tier", "config", "replicas"),
    [
        ("Deployment", "harvester-web-server", "web-server", "web_server.json", None),
        ("Deployment", "harvester-foreman", "foreman", "foreman.json", 1),
        ("Deployment", "harvester-worker", "worker", "worker.json", 3),
        ("Job", "harvester-migrate", "migrate", None, None),
    ],
)
def test_k8s_workloads(kind: str, name: str, tier: str, config: str | None, replicas: int | None) -> None:
    doc = k8s_by_kind(kind)[name]
    if replicas is not None:
        assert doc["spec"]["replicas"] == replicas
    spec = pod_spec(doc)
    assert spec["terminationGracePeriodSeconds"] == 30
    (container,) = spec["containers"]
    argv = k8s_argv(container)
    assert argv[0] == tier, argv
    cfg = config_arg(argv)
    if config is not None:
        assert cfg == f"{CONFIG_DIR_IN_IMAGE}{config}"
    # The -config file is a key of the mounted ConfigMap.
    mount = next(m for m in container["volumeMounts"] if cfg.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = k8s_by_kind("ConfigMap")[volume["configMap"]["name"]]
    assert cfg.rsplit("/", 1)[1] in configmap["data"]
    # The database / NATS URLs come from the Secret.
    secrets = k8s_by_kind("Secret")
    env = {e["name"]: e for e in container["env"]}
    for key in ENV_KEYS:
        ref = env[key]["valueFrom"]["secretKeyRef"]
        secret = secrets[ref["name"]]
        assert ref["key"] in {**secret.get("stringData", {}), **secret.get("data", {})}


def test_k8s_worker_deployment_runs_worker_command() -> None:
    worker = k8s_by_kind("Deployment")["harvester-worker"]
    argv = k8s_argv(pod_spec(worker)["containers"][0])
    assert argv[:3] == ["worker", "-config", "/etc/harvester/worker.json"]


def test_k8s_web_server_probes_and_service() -> None:
    web = k8s_by_kind("Deployment")["harvester-web-server"]
    (container,) = pod_spec(web)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8080
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] in ("http", 8080)
    svc = k8s_by_kind("Service")["harvester-web-server"]
    labels = web["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", 8080)


def test_k8s_configmap_configs_match_example_configs() -> None:
    data = k8s_by_kind("ConfigMap")["harvester-config"]["data"]
    for tier in REQUIRED_CONFIG_KEYS:
        in_cluster = json.loads(data[f"{tier}.json"])
        example = json.loads((ROOT / "config" / f"{tier}.json").read_text())
        assert in_cluster.keys() == example.keys(), tier


# --------------------------------------------------------------------------- systemd


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file -> {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        current.append((key.strip(), value.strip()))
    return sections


UNITS = {
    "harvester-web-server.service": ("web-server", "web_server.json"),
    "harvester-foreman.service": ("foreman", "foreman.json"),
    "harvester-worker@.service": ("worker", "worker.json"),
    "harvester-browser-worker@.service": ("worker", "worker.json"),
    "harvester-migrate.service": ("migrate", None),
}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_units(unit: str) -> None:
    tier, config = UNITS[unit]
    sections = parse_unit(SYSTEMD / unit)
    assert "Unit" in sections and "Service" in sections and "Install" in sections
    service = dict(sections["Service"])
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/harvester/.venv/bin/harvester"
    assert argv[1] == tier, argv
    cfg = config_arg(argv)
    if config is not None:
        assert cfg == f"/etc/harvester/{config}"
    assert service["User"] == "harvester"
    assert service["EnvironmentFile"] == "-/etc/harvester/env"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "30"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    if tier == "migrate":
        assert service["Type"] == "oneshot"
    else:
        assert service["Restart"] == "on-failure"
        unit_section = dict(sections["Unit"])
        assert "harvester-migrate.service" in unit_section.get("After", "")
        assert "harvester-migrate.service" in unit_section.get("Requires", "")


def test_browser_worker_unit_notifies_systemd_and_runs_chromium() -> None:
    """The browser worker: -kind browser=4, Type=notify with a watchdog (the worker sends READY
    and a WATCHDOG per heartbeat: worker/sdnotify.py), Debian's chromium, a memory cap, and no
    MemoryDenyWriteExecute (V8's JIT needs it off)."""
    sections = parse_unit(SYSTEMD / "harvester-browser-worker@.service")
    service = dict(sections["Service"])
    argv = shlex.split(service["ExecStart"])
    assert argv[argv.index("-kind") + 1] == "browser=4"
    assert (service["Type"], service["NotifyAccess"], service["WatchdogSec"]) == (
        "notify", "main", "60s")
    assert (service["Restart"], service["RestartSec"], service["MemoryMax"]) == (
        "on-failure", "5s", "2G")
    envs = [v for k, v in sections["Service"] if k == "Environment"]
    assert "HARVESTER_BROWSER_PATH=/usr/bin/chromium" in envs
    assert "MemoryDenyWriteExecute" not in service
    worker = dict(parse_unit(SYSTEMD / "harvester-worker@.service")["Service"])
    hardening = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                 "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                 "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality",
                 "RestrictAddressFamilies")
    assert {k: service.get(k) for k in hardening} == {k: worker.get(k) for k in hardening}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_analyze_verifies_the_unit(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` on a copy whose ExecStart runs /bin/true (the install path
    does not exist here): any complaint but a command "not executable" fails (it prints an
    unknown key or a bad value and still exits 0, so its output is what is checked)."""
    import shutil
    import subprocess

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    for other in SYSTEMD.glob("*.service"):  # the units it requires are found beside it
        text = other.read_text().replace("/opt/harvester/.venv/bin/harvester", "/bin/true")
        (tmp_path / other.name).write_text(text)
    name = unit.replace("@.", "@1.")
    r = subprocess.run([analyze, "verify", "--man=no", f"./{name}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, check=False)
    complaints = [ln for ln in (r.stdout + r.stderr).splitlines()
                  if ln.strip() and "not executable" not in ln]
    assert not complaints, complaints


def test_grafana_dashboard_reads_only_metrics_harvester_exports() -> None:
    """Every ``harvester_*`` series a panel queries is one shared/metrics.py declares (a
    renamed metric would leave a panel silently empty)."""
    import re

    from prometheus_client import REGISTRY

    import shared.metrics  # noqa: F401  (declares them)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {m.name + suffix for m in REGISTRY.collect() if m.name.startswith("harvester_")
                for suffix in suffixes.get(m.type, ())}
    board = json.loads((ROOT / "deploy" / "grafana" / "harvester.json").read_text())
    queried = {name for p in board["panels"] for t in p["targets"]
               for name in re.findall(r"harvester_\w+", t["expr"])}
    assert {"harvester_fetch_seconds_bucket", "harvester_watchdog_total"} <= queried
    assert queried - exported == set()
