"""What the durable-job tests share: a server template that runs JetStream."""

from __future__ import annotations

from pathlib import Path

from agoramesh.config import JetStreamConfig, ServerConfig


def js_template(base: Path, **jetstream: int) -> ServerConfig:
    """Seeds with JetStream (limits in ``jetstream``), on loopback."""
    return ServerConfig(name="template", data_dir=base, jetstream=JetStreamConfig(**jetstream))
