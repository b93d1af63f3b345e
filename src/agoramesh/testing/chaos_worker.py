"""The program behind the chaos suite's ``command`` agents: it logs every execution.

``python -S …/chaos_worker.py LOG`` (the file, so that nothing of agoramesh is
imported for each execution) reads one task (JSON, as the
command backend sends it) from stdin, appends ``start <task_id> <pid> <ppid>
<unix time>`` to LOG, sleeps ``parameters.seconds``, appends the same with
``end`` and prints ``{"n": …, "pid": …}``. An execution is an ``end`` line; a
``start`` without one was cut short (its node was killed, or the task
cancelled). ``ppid`` is the node that ran it. Lines are appended with
O_APPEND, so the programs of every worker share LOG.
"""

from __future__ import annotations

import json
import os
import sys
import time

__all__ = ("main",)


def _log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m agoramesh.testing.chaos_worker LOG", file=sys.stderr)
        return 2
    log = argv[1]
    task = json.load(sys.stdin)
    task_id, parameters = str(task.get("task_id")), task.get("parameters") or {}
    who = f"{os.getpid()} {os.getppid()}"
    _log(log, f"start {task_id} {who} {time.time():.3f}")
    time.sleep(float(parameters.get("seconds", 0)))
    _log(log, f"end {task_id} {who} {time.time():.3f}")
    print(json.dumps({"n": parameters.get("n"), "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
