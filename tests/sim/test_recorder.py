"""TrajectoryRecorder: a JSON line per event, whole lines from many threads, torn tails skipped."""

from __future__ import annotations

import json
import threading
from enum import Enum, IntEnum
from pathlib import Path

import pytest

from agoramesh.errors import AgoraError, InvalidWorldCall
from agoramesh.sim import ActionStatus, GridWorld, TrajectoryRecorder, read_trajectory
from agoramesh.sim.recorder import event_counts


class Colour(Enum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


def test_an_episode_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "episode.jsonl"
    world = GridWorld(seed=0)
    with TrajectoryRecorder(str(path)) as recorder:
        recorder.start_episode(seed=0, agents=world.sim_ids(), mode="decentralized")
        status, message, result = world.process_command("agent_1", "WAIT")
        recorder.record_step(agent_id="agent_1", step=1, action="WAIT", status=status,
                             message=message, result=result)
        recorder.record_message(agent_id="agent_1", direction="sent",
                                message={"type": "help", "task_id": "task_1"})
        recorder.record_negotiation(agent_id="agent_2", result={"winner": "agent_2"})
        recorder.record_llm_interaction(task_index=0, interaction_index=2, prompt="p",
                                        response="WAIT", tokens_used=12,
                                        response_time_ms=3.5, extracted_action="WAIT")
        recorder.record("custom", detail=[1, 2])
        recorder.end_episode(**world.evaluate())
        assert recorder.lines == 7
        was_open = not recorder.closed
    assert was_open and recorder.closed
    records = read_trajectory(path)
    assert [r["event"] for r in records] == [
        "episode_start", "step", "message", "negotiation", "llm", "custom", "episode_end"]
    assert all(list(r)[:2] == ["ts", "event"] for r in records)
    assert all(isinstance(r["ts"], float) and round(r["ts"], 3) == r["ts"] for r in records)
    start, step, message_line, negotiation, llm, custom, end = records
    assert start["agents"] == ["agent_1", "agent_2", "agent_3"]
    assert step == {"ts": step["ts"], "event": "step", "agent_id": "agent_1", "step": 1,
                    "action": "WAIT", "status": "SUCCESS", "message": message,
                    "result": result}
    assert message_line["direction"] == "sent" and message_line["message"]["type"] == "help"
    assert negotiation["result"] == {"winner": "agent_2"}
    assert llm["tokens_used"] == 12 and llm["extracted_action"] == "WAIT"
    assert custom["detail"] == [1, 2] and end["steps"] == 1 and end["success"] is False
    assert event_counts(records) == {"episode_start": 1, "step": 1, "message": 1,
                                     "negotiation": 1, "llm": 1, "custom": 1, "episode_end": 1}


def test_a_second_recorder_appends(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TrajectoryRecorder(path) as first:
        first.start_episode(run=1)
    with TrajectoryRecorder(path) as second:
        second.start_episode(run=2)
        assert second.lines == 1
    assert [r["run"] for r in read_trajectory(path)] == [1, 2]


def test_values_that_are_not_json_are_written_anyway(tmp_path: Path) -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with TrajectoryRecorder(tmp_path / "t.jsonl") as recorder:
        recorder.record("odd", path=Path("/x"), pair=(1, 2), members={3, 1, 2},
                        mixed={1, "a"}, colour=Colour.RED, level=Level.HIGH,
                        status=ActionStatus.INVALID, nan=float("nan"), raw=b"\x00",
                        thing=object, keyed={(1, 2): "tuple key", Colour.RED: 1, 5: "int"},
                        cyclic=cyclic, text="line\u2028break \ud800")
    [line] = (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["path"] == repr(Path("/x")) and record["pair"] == [1, 2]
    assert record["members"] == [1, 2, 3] and sorted(map(str, record["mixed"])) == ["1", "a"]
    assert record["colour"] == "red" and record["level"] == 3 and record["status"] == "INVALID"
    assert record["nan"] == "nan" and record["raw"] == repr(b"\x00")
    assert record["thing"] == repr(object)
    assert record["keyed"] == {"(1, 2)": "tuple key", "red": 1, "5": "int"}
    assert isinstance(record["cyclic"], list) and record["text"] == "line\u2028break \ud800"


def test_the_recorder_owns_ts_and_event(tmp_path: Path) -> None:
    with TrajectoryRecorder(tmp_path / "t.jsonl") as recorder:
        recorder.record("real", ts=1, event="fake", other=2)
    [record] = read_trajectory(tmp_path / "t.jsonl")
    assert record["event"] == "real" and record["ts"] > 1 and record["other"] == 2


def test_a_torn_last_line_is_skipped_but_a_corrupt_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TrajectoryRecorder(path) as recorder:
        recorder.start_episode()
        recorder.record("step", n=1)
    with path.open("a", encoding="utf-8") as file:
        file.write('{"ts": 1.0, "event": "st')
    assert [r["event"] for r in read_trajectory(path)] == ["episode_start", "step"]
    with path.open("a", encoding="utf-8") as file:
        file.write('ep"}\nnot json\n{"event": "end"}\n')
    with pytest.raises(AgoraError, match=r"t\.jsonl:4: not a JSON line"):
        read_trajectory(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert read_trajectory(empty) == []


def test_a_closed_recorder_refuses_to_write(tmp_path: Path) -> None:
    recorder = TrajectoryRecorder(tmp_path / "t.jsonl")
    recorder.close()
    recorder.close()  # idempotent
    with pytest.raises(AgoraError, match="is closed"):
        recorder.start_episode()
    assert recorder.lines == 0


def test_a_message_goes_one_of_two_ways(tmp_path: Path) -> None:
    with TrajectoryRecorder(tmp_path / "t.jsonl") as recorder:
        with pytest.raises(InvalidWorldCall, match="direction"):
            recorder.record_message(agent_id="a", direction="sideways",  # type: ignore[arg-type]
                                    message={})
        recorder.record_message(agent_id="a", direction="received", message={"n": 1})
    assert event_counts(read_trajectory(tmp_path / "t.jsonl")) == {"message": 1}


def test_concurrent_writers_produce_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    threads_n, per_thread = 8, 200
    payload = "x" * 4096  # longer than one write buffer: lines must still not interleave
    with TrajectoryRecorder(path) as recorder:

        def write(writer: int) -> None:
            for n in range(per_thread):
                recorder.record("step", thread=writer, n=n, payload=payload)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert recorder.lines == threads_n * per_thread
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines.pop() == "" and len(lines) == threads_n * per_thread
    records = [json.loads(line) for line in lines]
    for writer in range(threads_n):
        assert [r["n"] for r in records if r["thread"] == writer] == list(range(per_thread))
    assert all(r["payload"] == payload for r in records)
