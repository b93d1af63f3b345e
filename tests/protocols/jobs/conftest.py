"""A 3-seed mesh running JetStream, its job store created, for the durable-job tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from jobs_support import js_template

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig, JobsConfig
from agoramesh.testing.plugin import MeshFactory


@pytest_asyncio.fixture
async def js_mesh(mesh_factory: MeshFactory, tmp_path: Path) -> AsyncIterator[Mesh]:
    """3 seeds and a leaf; the job stream and result store exist with 3 replicas."""
    mesh = await mesh_factory(seeds=3, leaves=1, template=js_template(tmp_path / "js"))
    async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,))) as bus:
        await JetStream(bus, JobsConfig(replicas=3)).ensure()
    yield mesh
