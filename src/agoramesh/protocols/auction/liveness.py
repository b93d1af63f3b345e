"""Whether agents that fell silent are gone from the mesh, or may only be paused.

An agent that stopped heartbeating or leasing may be frozen (SIGSTOP, a long
pause: it resumes and answers late) or dead (killed, crashed). NATS tells the
two apart: every agent answers the services protocol's
``$SRV.PING.<name>.<agent id>`` (PROTOCOL.md §15) on its own connection, so
while that connection stands the subject has a subscriber and a request there
is delivered (a frozen agent never answers it), and once the connection has
closed (the process died and the kernel closed its sockets) the server
answers at once "no responders". An auction waits for a frozen agent, not for
a gone one (PROTOCOL.md §16).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from agoramesh.bus.bus import Bus
from agoramesh.bus.requests import ping
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.services import instance_subject, service_name

__all__ = ("gone",)


async def gone(bus: Bus, directory: Directory | None, agent_ids: Collection[str],
               timeout: float) -> set[str]:
    """Those of ``agent_ids`` the mesh holds no connection of: their ping drew "no
    responders". One that answers, or does not within ``timeout`` (frozen, or its ping
    not let through), or whose name is not known here, is not judged gone."""
    if directory is None or not agent_ids:
        return set()
    named = [(agent_id, name) for agent_id in agent_ids
             if (name := directory.name_of(agent_id)) is not None]
    answers = await asyncio.gather(*(
        ping(bus, instance_subject("PING", service_name(name), agent_id), timeout=timeout)
        for agent_id, name in named))
    return {agent_id for (agent_id, _), answer in zip(named, answers, strict=True)
            if answer is False}
