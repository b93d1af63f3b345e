"""The compose stack itself, under Docker, through testcontainers' compose module.

``DockerCompose`` builds the agent image from the repository, pulls the pinned
images and brings compose/ up (default profile, ``--wait`` for the
healthchecks), on free host ports and a project name of its own; then the
hubs route to each other, every default agent is a leaf of the hubs and
answers discovery, Prometheus scrapes every target of the running services,
and ``nats req`` from the nats-box container is answered. ``down --volumes``
removes it all.

Skipped, with the reason, where no Docker engine answers (or the ``docker
compose`` plugin testcontainers drives is missing). There the same configs
and command lines run as local processes (tests/compose/test_compose_processes.py).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testcontainers.compose import DockerCompose

# The first run builds the agent image and pulls the others.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
#: Host ports the stack publishes, each set through its compose variable.
PUBLISHED = ("NATS_PORT", "NATS_MONITOR_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")


def docker_unavailable() -> str | None:
    """Why the compose stack cannot run here, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI: testcontainers drives `docker compose`"
    try:
        engine = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"],
                                capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 20 s"
    if engine.returncode != 0 or not engine.stdout.strip():
        return f"no Docker engine reachable: {engine.stderr.strip() or engine.returncode}"
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                            timeout=20, check=False)
    if plugin.returncode != 0:
        return "the `docker compose` plugin is not installed (testcontainers drives it)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    return data


def _hubs() -> list[str]:
    return sorted(name for name, service in _compose_file()["services"].items()
                  if str(service.get("image", "")).startswith("nats:"))


def _default_agents() -> list[str]:
    return sorted(name for name, service in _compose_file()["services"].items()
                  if "build" in service and not service.get("profiles"))


def _expected_targets() -> set[str]:
    """The scrape targets of services that run without a profile."""
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    return {target for job in config["scrape_configs"]
            for static in job.get("static_configs", [])
            if static.get("labels", {}).get("profile", "default") == "default"
            for target in static["targets"]}


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g}s")
        time.sleep(1)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[DockerCompose, dict[str, int]]]:
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(reason)
    ports = {name: _free_port() for name in PUBLISHED}
    with pytest.MonkeyPatch.context() as patch:
        for name, port in ports.items():
            patch.setenv(name, str(port))
        patch.setenv("COMPOSE_PROJECT_NAME", f"agoramesh-test-{secrets.token_hex(3)}")
        with DockerCompose(COMPOSE_DIR, compose_file_name="docker-compose.yml", build=True,
                           wait=True) as compose:
            yield compose, ports


def _exec_json(compose: DockerCompose, service: str, argv: list[str]) -> Any:
    stdout, stderr, code = compose.exec_in_container(argv, service_name=service)
    assert code == 0, f"{service}: {argv}: {stderr}"
    return json.loads(stdout)


def test_hubs_route_to_each_other(stack: tuple[DockerCompose, dict[str, int]]) -> None:
    compose, _ = stack
    hubs = _hubs()

    def routed(hub: str) -> bool:
        routez = _exec_json(compose, hub, ["wget", "-qO-", "http://127.0.0.1:8222/routez"])
        return {route.get("remote_name") for route in routez["routes"]} == set(hubs) - {hub}

    for hub in hubs:
        _eventually(lambda hub=hub: routed(hub), 30, f"{hub} routes to the other hubs")


def test_every_agent_joins(stack: tuple[DockerCompose, dict[str, int]]) -> None:
    compose, _ = stack
    agents = _default_agents()

    def leaves() -> list[str]:
        return sorted(leaf.get("name") for hub in _hubs()
                      for leaf in _exec_json(compose, hub, [
                          "wget", "-qO-", "http://127.0.0.1:8222/leafz"])["leafs"])

    _eventually(lambda: leaves() == agents, 60, f"one leaf connection each for {agents}")
    listing = ["agoramesh", "agents", "--server", "nats://nats1:4222", "--json", "--timeout", "2"]
    _eventually(lambda: sorted(card["name"] for card in _exec_json(compose, agents[0], listing))
                == agents, 60, f"{agents} answer discovery")


def test_prometheus_scrapes_every_target(stack: tuple[DockerCompose, dict[str, int]]) -> None:
    _, ports = stack
    url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/targets"
    expected = _expected_targets()

    def all_up() -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:
            targets = json.load(response)["data"]["activeTargets"]
        health = {target["labels"]["instance"]: target["health"] for target in targets}
        return all(health.get(target) == "up" for target in expected)

    _eventually(all_up, 90, f"Prometheus scrapes {sorted(expected)}")


def test_nats_req_from_nats_box_is_answered(
        stack: tuple[DockerCompose, dict[str, int]]) -> None:
    compose, _ = stack
    for subject, body in (("agora.cap.text.summarize",
                           {"text": "NATS is a messaging system. Agents talk over it."}),
                          ("agora.task.math.evaluate", {"expression": "6*7"})):
        reply = _exec_json(compose, "nats-box", ["nats", "req", "--raw", "--timeout", "15s",
                                                 subject, json.dumps(body)])
        assert reply["status"] == "COMPLETED", reply
    assert reply["result"] == {"value": 42}, reply
