"""Test support: real nats-server fixtures on free loopback ports, always cleaned up.

Enable in a conftest.py with ``pytest_plugins = ["agoramesh.testing.plugin"]``
(needs pytest-asyncio).
"""

from agoramesh.testing.node import NodeProcess
from agoramesh.testing.processes import AGORAMESH, alive, assert_stopped
from agoramesh.testing.up import UpProcess
from agoramesh.testing.waiting import wait_until

__all__ = ("AGORAMESH", "NodeProcess", "UpProcess", "alive", "assert_stopped", "wait_until")
