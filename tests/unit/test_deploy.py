"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile, config/*.json,
deploy/k8s/*.yaml and deploy/systemd/*.service.

No Docker, Kubernetes or systemd is needed: the files are parsed and checked against the
interface the code exposes (tiers, `-config`, HARVESTER_* environment overrides, /healthz).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
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


def yaml_mapping(path: Path) -> dict:
    with path.open() as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), f"{path.name} is not a mapping"
    return doc


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml_mapping(COMPOSE)


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


# --------------------------------------------------------------------------- NATS cluster (issue 18)
#
# deploy/k8s/nats.yaml runs three nats-servers as a StatefulSet; docker-compose.nats-cluster.yml
# turns compose's one NATS into three. Both are checked against the real nats-server of the
# wheel: the k8s nats.conf with `nats-server -t`, the compose nodes by starting them.

NATS_CLUSTER = 3
COMPOSE_NATS_CLUSTER = ROOT / "docker-compose.nats-cluster.yml"
NATS_CONF_VAR = re.compile(r"\$(\w+)")


def nats_statefulset() -> dict:
    return k8s_by_kind("StatefulSet")["harvester-nats"]


def nats_container() -> dict:
    (container,) = pod_spec(nats_statefulset())["containers"]
    return container


def nats_conf() -> tuple[str, str]:
    """The StatefulSet's nats.conf: (its path in the pod, its text from the ConfigMap)."""
    container = nats_container()
    argv = k8s_argv(container)
    flag = next(f for f in ("--config", "-c") if f in argv)
    path = argv[argv.index(flag) + 1]
    mount = next(m for m in container["volumeMounts"]
                 if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod_spec(nats_statefulset())["volumes"] if v["name"] == mount["name"])
    data = k8s_by_kind("ConfigMap")[volume["configMap"]["name"]]["data"]
    return path, data[path[len(mount["mountPath"].rstrip("/")) + 1:]]


def conf_value(conf: str, key: str) -> str:
    """The value of the first ``key: value`` line (nats.conf's syntax, as written here)."""
    m = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)\s*$", conf, re.MULTILINE)
    assert m, f"nats.conf has no {key}"
    return m.group(1)


def nats_pod_env(pod: str) -> dict[str, str]:
    """The environment the StatefulSet gives pod ``pod`` (literal values and the pod's name)."""
    env = {}
    for e in nats_container().get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod
    return env


def nats_pods() -> list[str]:
    sts = nats_statefulset()
    return [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]


def test_k8s_nats_is_a_statefulset_of_three_with_jetstream_on_a_pvc() -> None:
    sts = nats_statefulset()
    assert sts["spec"]["replicas"] == NATS_CLUSTER
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    _, conf = nats_conf()
    # Every node its own server_name, from the pod's name.
    var = NATS_CONF_VAR.fullmatch(conf_value(conf, "server_name"))
    assert var, "server_name must come from the pod's name"
    assert {nats_pod_env(p)[var.group(1)] for p in nats_pods()} == set(nats_pods())
    # JetStream's store on the per-pod claim, capped below the claim's size.
    assert re.search(r"^jetstream\s*\{", conf, re.MULTILINE)
    store = conf_value(conf, "store_dir")
    container = nats_container()
    mount = next(m for m in container["volumeMounts"] if m["mountPath"].rstrip("/") == store)
    (claim,) = [t for t in sts["spec"]["volumeClaimTemplates"]
                if t["metadata"]["name"] == mount["name"]]
    assert mount["name"] not in {v["name"] for v in pod_spec(sts).get("volumes", [])}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

    def gib(size: str) -> int:
        m = re.fullmatch(r"(\d+)\s*(G|Gi|GB)", size)
        assert m, size
        return int(m.group(1))

    assert gib(conf_value(conf, "max_file_store")) < gib(claim["spec"]["resources"]["requests"]["storage"])
    # Lame duck on stop: the preStop signal reaches the pid file nats.conf writes.
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert f"ldm={conf_value(conf, 'pid_file')}" in pre_stop
    lame_duck = int(conf_value(conf, "lame_duck_duration").removesuffix("s"))
    assert pod_spec(sts)["terminationGracePeriodSeconds"] > lame_duck


def test_k8s_nats_routes_name_all_three_pods_through_the_headless_service() -> None:
    sts = nats_statefulset()
    headless = k8s_by_kind("Service")[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()
    _, conf = nats_conf()
    cluster = re.search(r"^cluster\s*\{(.*?)^\}", conf, re.MULTILINE | re.DOTALL)
    assert cluster, "nats.conf has no cluster block"
    route_port = int(conf_value(cluster.group(1), "listen").rsplit(":", 1)[1])
    assert conf_value(cluster.group(1), "name")
    routes = re.findall(r"nats://([\w.-]+):(\d+)", cluster.group(1))
    expected = {(f"{pod}.{headless['metadata']['name']}", str(route_port)) for pod in nats_pods()}
    assert set(routes) == expected
    assert {p["port"] for p in headless["spec"]["ports"]} >= {4222, route_port}
    client = k8s_by_kind("Service")["harvester-nats"]
    assert client["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in client["spec"]["ports"]] == [4222]


def test_k8s_nats_one_pod_per_node_and_a_disruption_budget_of_one() -> None:
    sts = nats_statefulset()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    (term,) = pod_spec(sts)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    pdbs = [d for d in k8s_by_kind("PodDisruptionBudget").values()
            if d["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert len(pdbs) == 1
    assert pdbs[0]["apiVersion"] == "policy/v1"
    assert pdbs[0]["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdbs[0]["spec"]


@pytest.mark.parametrize("pod", range(NATS_CLUSTER))
def test_k8s_nats_conf_is_valid_for_nats_server(pod: int, tmp_path: Path) -> None:
    """``nats-server -t`` (check the configuration, start nothing) on the ConfigMap's nats.conf
    in the environment the StatefulSet gives the pod: a syntax error, an unknown key or an
    undefined $VARIABLE fails."""
    import os
    import subprocess

    from harvester_ops.embedded import nats_server_bin

    _, conf = nats_conf()
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    env = {"PATH": os.environ.get("PATH", ""), **nats_pod_env(nats_pods()[pod])}
    r = subprocess.run([nats_server_bin(), "-c", str(path), "-t"], env=env,
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # Without the pod's environment the same file is refused: -t did resolve the variables.
    r = subprocess.run([nats_server_bin(), "-c", str(path), "-t"], env={"PATH": env["PATH"]},
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode != 0


def test_k8s_tiers_get_the_three_nats_urls_and_three_replicas() -> None:
    secret = k8s_by_kind("Secret")["harvester"]["stringData"]
    sts = nats_statefulset()
    headless = sts["spec"]["serviceName"]
    client_port = next(p["containerPort"] for p in nats_container()["ports"] if p["name"] == "client")
    assert secret["nats-url"].split(",") == [f"nats://{pod}.{headless}:{client_port}"
                                             for pod in nats_pods()]
    from shared.bus import nats_servers

    assert len(nats_servers(secret["nats-url"])) == NATS_CLUSTER
    assert secret["nats-replicas"] == str(NATS_CLUSTER)
    for name in ("harvester-web-server", "harvester-foreman", "harvester-worker"):
        (container,) = pod_spec(k8s_by_kind("Deployment")[name])["containers"]
        env = {e["name"]: e for e in container["env"]}
        ref = env["HARVESTER_NATS_REPLICAS"]["valueFrom"]["secretKeyRef"]
        # optional: a Secret made before the key existed (one NATS server) still starts the tier.
        assert (ref["name"], ref["key"], ref.get("optional")) == ("harvester", "nats-replicas", True)


def test_k8s_cloudnativepg_cluster_has_a_replica_and_the_harvester_database() -> None:
    docs = [(name, d) for name, d in k8s_docs() if d["kind"] == "Cluster"]
    (name, pg), = docs
    assert pg["apiVersion"] == "postgresql.cnpg.io/v1"
    assert pg["spec"]["instances"] == 2  # a primary and one streaming replica
    assert pg["spec"]["bootstrap"]["initdb"] == {"database": "harvester", "owner": "harvester"}
    assert pg["spec"]["storage"]["size"]
    assert pg["spec"]["affinity"]["topologyKey"] == "kubernetes.io/hostname"
    assert int(pg["spec"]["postgresql"]["parameters"]["max_connections"]) >= 300
    text = (K8S / name).read_text()
    cluster = pg["metadata"]["name"]
    assert "operator" in text.lower()
    # The tiers' URL names the primary's service; the replica's is for read-only clients.
    for service in (f"{cluster}-rw", f"{cluster}-ro", f"{cluster}-app"):
        assert service in text
    assert f"{cluster}-rw" in (K8S / "secret.example.yaml").read_text()


# --------------------------------------------------------------------------- compose NATS cluster


@pytest.fixture(scope="module")
def nats_override() -> dict:
    return yaml_mapping(COMPOSE_NATS_CLUSTER)


def merged_service(base: dict, override: dict) -> dict:
    """Compose's merge of one service, for the keys these files use: mappings (environment,
    depends_on, networks) merge, volumes by their path in the container, the rest is replaced."""
    out = dict(base)
    for key, value in override.items():
        if key == "volumes":
            by_target = {str(v).split(":")[1]: v for v in base.get("volumes", [])}
            by_target.update({str(v).split(":")[1]: v for v in value})
            out[key] = list(by_target.values())
        elif key == "environment":
            out[key] = {**env_of(base), **env_of(override)}
        elif key == "depends_on":
            out[key] = {**depends_on(base), **depends_on(override)}
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def cluster_services(services: dict, nats_override: dict) -> dict:
    merged = dict(services)
    for name, svc in nats_override["services"].items():
        merged[name] = merged_service(services.get(name, {}), svc)
    return merged


def nats_nodes(cluster_services: dict) -> dict[str, dict]:
    """The NATS services of the merged files, by the server name each runs as."""
    nodes = {}
    for svc in cluster_services.values():
        argv = as_argv(svc.get("command"))
        if str(svc.get("image", "")).startswith("nats:") and "--server_name" in argv:
            nodes[argv[argv.index("--server_name") + 1]] = svc
    return nodes


def dns_names(name: str, svc: dict) -> set[str]:
    """The names a service answers to on the compose network: its own and its aliases."""
    aliases = (svc.get("networks") or {}).get("default", {}) or {}
    return {name, *aliases.get("aliases", [])}


def test_compose_nats_cluster_override_is_three_clustered_jetstream_nodes(
        compose: dict, services: dict, nats_override: dict, cluster_services: dict) -> None:
    # The override only adds to services the base has or to its own NATS nodes.
    for name in nats_override["services"]:
        assert name in services or name.startswith("nats-"), name
    nodes = nats_nodes(cluster_services)
    assert sorted(nodes) == [f"nats-{i}" for i in range(1, NATS_CLUSTER + 1)]
    names = {n: next(k for k, s in cluster_services.items() if s is svc) for n, svc in nodes.items()}
    volumes = {**(compose.get("volumes") or {}), **(nats_override.get("volumes") or {})}
    stores = set()
    for server, svc in nodes.items():
        assert svc["image"].startswith("nats:2.")
        # Each node resolves by its server name (the routes and the tiers' URLs use them).
        assert server in dns_names(names[server], svc)
        argv = as_argv(svc["command"])
        assert "-js" in argv
        assert argv[argv.index("--cluster_name") + 1] == "harvester"
        assert argv[argv.index("--cluster") + 1] == "nats://0.0.0.0:6222"
        routes = argv[argv.index("--routes") + 1].split(",")
        assert sorted(routes) == [f"nats://{n}:6222" for n in sorted(nodes)]
        store = argv[argv.index("-sd") + 1]
        (mount,) = [str(v).split(":") for v in svc["volumes"] if str(v).split(":")[1] == store]
        assert mount[0] in volumes, f"{server}'s JetStream store is not on a named volume"
        stores.add(mount[0])
    assert len(stores) == NATS_CLUSTER, "each node needs its own store"


@pytest.mark.parametrize("service", HARVESTER_SERVICES)
def test_compose_nats_cluster_tiers_get_three_urls_and_replicas_3(
        services: dict, cluster_services: dict, service: str) -> None:
    svc = cluster_services[service]
    env = env_of(svc)
    from shared.bus import nats_servers

    urls = nats_servers(env["HARVESTER_NATS_URL"])
    assert urls == [f"nats://nats-{i}:4222" for i in range(1, NATS_CLUSTER + 1)]
    assert env["HARVESTER_NATS_REPLICAS"] == str(NATS_CLUSTER)
    assert env["HARVESTER_DATABASE_URL"] == env_of(services[service])["HARVESTER_DATABASE_URL"]
    if service != "migrate":
        nodes = nats_nodes(cluster_services)
        services_of_nodes = {k for k, s in cluster_services.items()
                             if any(s is n for n in nodes.values())}
        assert services_of_nodes <= depends_on(svc).keys()
        assert depends_on(svc)["migrate"]["condition"] == "service_completed_successfully"


@contextlib.contextmanager
def nats_nodes_running(argvs: dict[str, list[str]], client_ports: dict[str, int], logs: Path,
                       env: dict[str, dict[str, str]] | None = None) -> Iterator[dict[str, str]]:
    """Run the wheel's nats-server with each node's ``argvs``, wait until each listens on its
    client port, yield each node's client URL; terminate them on exit."""
    import os
    import socket
    import subprocess
    import time

    from harvester_ops.embedded import nats_server_bin

    with contextlib.ExitStack() as stack:
        procs = {}
        for server, argv in argvs.items():
            log = stack.enter_context((logs / f"{server}.log").open("wb"))
            proc = stack.enter_context(subprocess.Popen(
                [nats_server_bin(), *argv], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {}).get(server, {})}))
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            procs[server] = proc
        for server, port in client_ports.items():
            deadline = time.monotonic() + 10
            while True:
                assert procs[server].poll() is None, (logs / f"{server}.log").read_text()
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, f"{server} does not listen"
                time.sleep(0.05)
        yield {server: f"nats://127.0.0.1:{port}" for server, port in client_ports.items()}


async def assert_jetstream_cluster_of_three(urls: dict[str, str], cluster_name: str) -> None:
    """A stream of 3 replicas can be created on the nodes at ``urls`` (by server name), is led
    by one of them and followed by the two others, and takes a message."""
    import asyncio

    import nats

    nc = await nats.connect(servers=list(urls.values()))
    try:
        js = nc.jetstream()
        for _ in range(60):  # the JetStream meta group elects its leader within seconds
            try:
                await js.add_stream(name="R3", subjects=["r3"], num_replicas=NATS_CLUSTER)
                break
            except Exception:  # noqa: BLE001 - no JetStream quorum yet
                await asyncio.sleep(0.25)
        info = await js.stream_info("R3")
        ack = await js.publish("r3", b"x")
    finally:
        await nc.close()
    assert ack.seq == 1
    assert info.config.num_replicas == NATS_CLUSTER
    assert info.cluster is not None and info.cluster.name == cluster_name
    followers = {r.name for r in info.cluster.replicas or []}
    assert {info.cluster.leader, *followers} == set(urls)


async def test_compose_nats_cluster_commands_form_a_jetstream_cluster_of_three(
        cluster_services: dict, tmp_path: Path) -> None:
    """The compose override's three nodes, run as their commands say by the wheel's
    nats-server on loopback (the client and route ports remapped to free ones, the stores in
    tmp_path, the routes' host names to 127.0.0.1), form one JetStream cluster of three."""
    from harvester_ops.embedded import free_port

    nodes = nats_nodes(cluster_services)
    route_ports = {server: free_port() for server in nodes}
    client_ports = {server: free_port() for server in nodes}

    def local(url: str) -> str:  # nats://nats-2:6222 -> nats://127.0.0.1:<nats-2's route port>
        host = url.removeprefix("nats://").rsplit(":", 1)[0]
        return f"nats://127.0.0.1:{route_ports[host]}"

    argvs = {}
    for server, svc in nodes.items():
        argv = as_argv(svc["command"])
        argv[argv.index("-sd") + 1] = str(tmp_path / server)
        argv[argv.index("--cluster") + 1] = f"nats://127.0.0.1:{route_ports[server]}"
        i = argv.index("--routes") + 1
        argv[i] = ",".join(local(u) for u in argv[i].split(","))
        argvs[server] = ["-a", "127.0.0.1", "-p", str(client_ports[server]), *argv]
    (cluster_name,) = {a[a.index("--cluster_name") + 1] for a in argvs.values()}
    with nats_nodes_running(argvs, client_ports, tmp_path) as urls:
        await assert_jetstream_cluster_of_three(urls, cluster_name)


async def test_k8s_nats_conf_forms_a_jetstream_cluster_of_three(tmp_path: Path) -> None:
    """The StatefulSet's nats.conf, run for its three pods by the wheel's nats-server on
    loopback (each pod's POD_NAME; listen, monitor and route ports remapped to free ones, the
    pods' DNS names in the routes to 127.0.0.1, store and pid file in tmp_path), forms one
    JetStream cluster of three named after the pods."""
    from harvester_ops.embedded import free_port

    _, conf = nats_conf()
    headless = nats_statefulset()["spec"]["serviceName"]
    pods = nats_pods()
    route_ports = {pod: free_port() for pod in pods}
    client_ports = {pod: free_port() for pod in pods}
    cluster_block = re.search(r"^cluster\s*\{.*?^\}", conf, re.MULTILINE | re.DOTALL)
    assert cluster_block
    cluster_name = conf_value(cluster_block.group(0), "name")
    argvs, envs = {}, {}
    for pod in pods:
        text = conf
        for other in pods:
            text = re.sub(rf"nats://{re.escape(other)}\.{re.escape(headless)}:\d+",
                          f"nats://127.0.0.1:{route_ports[other]}", text)
        outside = text[:cluster_block.start()] + text[cluster_block.end():]
        assert conf_value(outside, "listen") == "0.0.0.0:4222"
        text = re.sub(r"^(\s*listen\s*:\s*)0\.0\.0\.0:4222\s*$",
                      rf"\g<1>127.0.0.1:{client_ports[pod]}", text, flags=re.MULTILINE)
        text = re.sub(r"^(\s*listen\s*:\s*)0\.0\.0\.0:6222\s*$",
                      rf"\g<1>127.0.0.1:{route_ports[pod]}", text, flags=re.MULTILINE)
        text = re.sub(r"^(\s*http\s*:\s*)\S+\s*$", rf"\g<1>127.0.0.1:{free_port()}", text,
                      flags=re.MULTILINE)
        text = re.sub(r"^(\s*store_dir\s*:\s*)\S+\s*$", rf"\g<1>{tmp_path / pod}", text,
                      flags=re.MULTILINE)
        text = re.sub(r"^(\s*pid_file\s*:\s*)\S+\s*$", rf"\g<1>{tmp_path / pod}.pid", text,
                      flags=re.MULTILINE)
        assert "0.0.0.0" not in text and headless not in text, text
        (tmp_path / f"{pod}.conf").write_text(text)
        argvs[pod] = ["-c", str(tmp_path / f"{pod}.conf")]
        envs[pod] = nats_pod_env(pod)
    with nats_nodes_running(argvs, client_ports, tmp_path, envs) as urls:
        await assert_jetstream_cluster_of_three(urls, cluster_name)
