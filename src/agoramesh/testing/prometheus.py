"""A real Prometheus server for tests: scrape given targets on loopback, query, stop.

Uses the ``prometheus`` binary on PATH (Debian's ``prometheus`` package; CI
installs it) with a throwaway TSDB, a 1 s scrape interval, and a free port.
``promtool`` comes with it: :func:`promtool_check_metrics` lints an exposition.
:class:`PrometheusAPI` queries a server started some other way (the compose
topology run as processes starts its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ("PrometheusAPI", "PrometheusServer", "promtool_check_metrics", "require_tool")


def require_tool(name: str) -> str:
    """The path of ``name``; skips the test if it is missing, unless CI requires it.

    ``.ci/run`` installs the Debian packages and sets ``AGORAMESH_REQUIRE_TOOLS=1``,
    so a missing tool fails there instead of silently skipping.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus docker-compose)"
        if os.environ.get("AGORAMESH_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on ``exposition`` (bounded to 30 s)."""
    return subprocess.run([require_tool("promtool"), "check", "metrics"],
                          input=exposition.decode(), capture_output=True, text=True,
                          timeout=30, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusAPI:
    """The HTTP API of the Prometheus server at ``url``: readiness, targets, queries."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def ready(self) -> bool:
        """True once the server answers ``/-/ready`` with 200."""
        try:
            return (await self._get("/-/ready"))[0] == 200
        except OSError:
            return False

    async def _get(self, path: str) -> tuple[int, bytes]:
        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    return int(response.status), bytes(response.read())
            except urllib.error.HTTPError as error:
                return int(error.code), bytes(error.read())

        return await asyncio.to_thread(fetch)

    async def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a ``/api/v1/...`` call."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = await self._get(f"/api/v1/{path}{query}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {status} {payload}")
        return payload["data"]

    async def targets(self) -> list[dict[str, Any]]:
        return list((await self.api("targets"))["activeTargets"])

    async def value(self, query: str) -> float | None:
        """The first sample of an instant ``query``, or None when it has none."""
        result = (await self.api("query", query=query))["result"]
        return float(result[0]["value"][1]) if result else None


class PrometheusServer(PrometheusAPI):
    """``async with PrometheusServer(tmp, {"job": ["127.0.0.1:9464"]}) as prom: …``."""

    def __init__(self, directory: Path, jobs: dict[str, list[str]], *,
                 interval: float = 1.0) -> None:
        self.directory = directory
        self.jobs = jobs
        self.interval = interval
        self.port = _free_port()
        self.process: asyncio.subprocess.Process | None = None
        super().__init__(f"http://127.0.0.1:{self.port}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout: float = 20.0) -> None:
        binary = require_tool("prometheus")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": f"{round(self.interval * 1000)}ms",
                       "scrape_timeout": f"{round(self.interval * 1000)}ms"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.jobs.items()],
        }))
        with (self.directory / "prometheus.log").open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary, f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        async with asyncio.timeout(timeout):
            while True:
                if self.process.returncode is not None:
                    tail = (self.directory / "prometheus.log").read_text(errors="replace")
                    raise RuntimeError(f"prometheus exited: {tail[-800:]}")
                if await self.ready():
                    return
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)

    async def __aenter__(self) -> PrometheusServer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
