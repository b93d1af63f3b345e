"""``nats req SUBJECT BODY`` as nats-box runs it: plain bytes, servers from ``NATS_URL``.

The local run of the compose topology (test_compose_processes.py) runs this in
the nats-box service's namespace with that service's environment, so the
request goes where ``docker compose exec nats-box nats req …`` would send it.
Prints the reply's body; exits 1 when none comes within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import nats
import nats.errors

__all__ = ("main", "request")


async def request(subject: str, body: bytes, timeout: float) -> bytes:
    servers = os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
    client = await nats.connect(servers=servers, connect_timeout=timeout,
                                allow_reconnect=False)
    try:
        reply = await client.request(subject, body, timeout=timeout)
    finally:
        await client.close()
    return bytes(reply.data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("subject")
    parser.add_argument("body")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        reply = asyncio.run(request(args.subject, args.body.encode(), args.timeout))
    except (nats.errors.Error, OSError, TimeoutError) as error:
        print(f"nats: error: {error!r}", file=sys.stderr)
        return 1
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
