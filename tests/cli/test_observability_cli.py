"""Metrics, health and trajectories of CLI processes: ``agoramesh up`` and ``agoramesh node``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agoramesh.observability.trajectory import read_trajectory
from agoramesh.testing import NodeProcess, UpProcess
from agoramesh.testing.prometheus import promtool_check_metrics
from agoramesh.testing.up import AGORAMESH

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def samples(body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        found.setdefault(family.name, [])
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def submit(up: UpProcess, capability: str, parameters: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([*AGORAMESH, "submit", capability, json.dumps(parameters), "--json",
                           "--server", up.url], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.splitlines()[-1]))


def post_task(up: UpProcess, capability: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Through the HTTP API: the auction is run by one of ``up``'s agents."""
    assert up.http is not None
    request = urllib.request.Request(
        up.http + "/api/tasks", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"capability": capability, "parameters": parameters}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def test_up_serves_metrics_for_every_agent_and_server(up_mesh: UpProcess) -> None:
    assert up_mesh.metrics is not None and up_mesh.metrics.endswith("/metrics")
    result = post_task(up_mesh, "text.summarize", {"text": "Metrics matter. Scrapes count."})
    assert result["status"] == "COMPLETED"
    status, body = get(up_mesh.metrics)
    assert status == 200
    checked = promtool_check_metrics(body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = samples(body)
    agents = {labels["agent"] for labels, value in found["agoramesh_agent_up"] if value == 1}
    assert agents == {"coder", "runner", "analyst", "pro", "con"}
    servers = {labels["server"] for labels, value in found["agoramesh_server_up"] if value == 1}
    assert servers == {"seed1", "seed2", "seed3"}
    awarded = sum(value for labels, value in found["agoramesh_auctions_total"]
                  if labels["outcome"] == "awarded")
    completed = sum(value for labels, value in found["agoramesh_tasks_total"]
                    if labels["capability"] == "text.summarize"
                    and labels["outcome"] == "completed")
    assert awarded >= 1 and completed >= 1

    status, body = get(up_mesh.metrics.removesuffix("/metrics") + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok", health
    assert set(health["agents"]) == agents and set(health["servers"]) == servers


def test_up_records_a_trajectory_per_agent(up_mesh: UpProcess) -> None:
    result = submit(up_mesh, "math.evaluate", {"expression": "6 * 7"})
    assert result["status"] == "COMPLETED"
    args = list(up_mesh.process.args)  # type: ignore[arg-type]
    directory = Path(args[args.index("--trajectory-dir") + 1])
    files = {path.stem: path for path in directory.glob("*.jsonl")}
    assert set(files) == {"coder", "runner", "analyst", "pro", "con"}
    analyst = read_trajectory(files["analyst"])
    assert any(event["event"] == "decided" and event.get("action") == "finish"
               and event.get("task_id") == result["task_id"] for event in analyst)
    assert any(event["event"] == "sent" and event.get("type") == "hello" for event in analyst)


@pytest.mark.integration
def test_node_serves_metrics_and_healthz_and_records_its_trajectory(
        tmp_path: Path, nats_server: Any) -> None:
    trajectory = tmp_path / "solo.jsonl"
    node = NodeProcess(tmp_path / "home", "--name", "solo", "--connect", nats_server.client_url,
                       "--capability", "echo", "--metrics-port", "0",
                       "--trajectory", str(trajectory))
    try:
        metrics = node.ready["metrics"]
        status, body = get(metrics)
        assert status == 200
        found = samples(body)
        assert found["agoramesh_agent_up"] == [({"agent": "solo"}, 1.0)]
        assert "agoramesh_server_up" in found and not found["agoramesh_server_up"]  # --connect
        status, body = get(metrics.removesuffix("/metrics") + "/healthz")
        assert status == 200 and json.loads(body)["agents"] == {"solo": "ready"}
        assert node.stop(signal.SIGINT) == 0, node.stderr
    finally:
        node.reap()
    events = read_trajectory(trajectory)
    assert events[0]["event"] == "start" and events[0]["agent_id"] == node.id
    sent = [e["type"] for e in events if e["event"] == "sent"]
    assert sent[:1] == ["hello"] and sent[-1] == "bye"  # its own bye may still echo back


@pytest.mark.integration
def test_a_metrics_port_in_use_is_a_one_line_error(tmp_path: Path, nats_server: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*AGORAMESH, "node", "--name", "clash", "--connect", nats_server.client_url,
             "--capability", "echo", "--metrics-port", str(port)],
            env={**os.environ, "AGORAMESH_HOME": str(tmp_path)}, capture_output=True,
            text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"agoramesh: error: cannot serve metrics on 127.0.0.1:{port}: address already in use")


@pytest.mark.parametrize("command", ["node", "up"])
def test_exporting_and_only_propagating_traces_exclude_each_other(command: str,
                                                                   tmp_path: Path) -> None:
    done = subprocess.run(
        [*AGORAMESH, command, *(["--name", "both"] if command == "node" else []),
         "--otlp-endpoint", "http://127.0.0.1:9/v1/traces", "--propagate-traces"],
        env={**os.environ, "AGORAMESH_HOME": str(tmp_path)}, capture_output=True, text=True,
        timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "argument --propagate-traces: not allowed with argument --otlp-endpoint")
