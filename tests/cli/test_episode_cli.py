"""``agoramesh episode``: episodes from the shell, on embedded servers and on ``agoramesh up``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agoramesh.sim import read_trajectory
from agoramesh.testing.cli import assert_one_line_error, cli

pytestmark = pytest.mark.e2e

BASELINE = str(Path(__file__).resolve().parents[2] / "config" / "baseline"
               / "decentralized_config.yaml")


def test_episodes_print_success_steps_messages_and_rounds() -> None:
    result = cli("episode", "--config", BASELINE, "--episodes", "2", "--seed", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["episode seed 5", "episode seed 6"]
    for line in lines[:2]:
        assert "success" in line and "steps" in line and "messages" in line
        assert "negotiation round" in line
    assert lines[2].startswith("2 episodes: success rate 100%")


def test_json_episode_with_overrides_and_a_trajectory(tmp_path: Path) -> None:
    trajectory = tmp_path / "episode.jsonl"
    result = cli("episode", "--agents", "4", "--strategy", "consensus", "--protocol", "gossip",
                 "--cooperation", "medium", "--trajectory", str(trajectory), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["agent_config"]["negotiation_strategy"] == "consensus"
    assert report["config"]["communication_config"]["protocol"] == "gossip"
    (episode,) = report["episodes"]
    assert episode["success"] is True and episode["tasks_completed"] == episode["tasks_total"]
    assert episode["messages"] > 0 and episode["negotiation_rounds"] >= 1
    assert report["summary"]["success_rate"] == 1.0
    events = {record["event"] for record in read_trajectory(trajectory)}
    assert {"episode_start", "step", "message", "negotiation", "episode_end"} <= events


def test_an_episode_on_a_shared_mesh_started_by_up(mesh_url: str) -> None:
    """Joining ``agoramesh up``: the team's traffic stays in its team beside the demo agents."""
    result = cli("episode", "--connect", mesh_url, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["episodes"][0]["success"] is True
    agents = cli("agents", "--server", mesh_url, "--json")
    assert agents.returncode == 0
    assert not [a for a in json.loads(agents.stdout) if a["type"] == "autonomous"], \
        "the episode's agents said bye"


@pytest.mark.parametrize(("args", "pattern"), [
    (("--config", "/nonexistent.yaml"), "cannot read /nonexistent.yaml"),
    (("--episodes", "0"), "--episodes must be 1-10000"),
    (("--agents", "40"), "number of agents must be 1-26"),
    (("--world-size", "2"), "--world-size must be 4-64"),
    (("--connect", "http://example"), r"mesh\.connect must be a nats:// URL"),
])
def test_bad_arguments_are_one_line_errors(args: tuple[str, ...], pattern: str) -> None:
    assert_one_line_error(cli("episode", *args), pattern)


def test_a_bad_config_value_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(Path(BASELINE).read_text().replace('"direct"', '"carrier-pigeon"'))
    assert_one_line_error(cli("episode", "--config", str(config)),
                          r"communication_config\.protocol must be one of direct, broadcast, "
                          r"gossip")
