"""The decentralized mode's configuration (M-7): the baseline file and every bad value.

No servers: these tests only read and check settings.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from decentralized_support import BASELINE, baseline

from agoramesh.errors import ConfigError
from agoramesh.modes.decentralized.autonomous_agent import AutonomousAgent
from agoramesh.modes.decentralized.base import BaseAgent
from agoramesh.modes.decentralized.config import (
    AGENT_CLASS,
    CommunicationProtocol,
    CooperationLevel,
    DecentralizedConfig,
    load_config,
)
from agoramesh.protocols.allocation.strategies import NegotiationStrategy
from agoramesh.sim import GridWorld

#: The four sections of M-7 and their keys, as M-7's config file has them.
M7_KEYS = {
    "agent_config": {"agent_class", "num_agents", "negotiation_strategy", "cooperation_level"},
    "communication_config": {"protocol", "timeout", "max_message_queue", "retry_attempts"},
    "llm_config": {"model_name", "temperature"},
    "execution": {"max_total_steps", "max_steps_per_task", "negotiation_rounds"},
}


def write(tmp_path: Path, raw: Any, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def with_value(section: str, key: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(baseline())
    raw[section][key] = value
    return raw


def test_baseline_file_has_exactly_the_m7_sections_and_keys() -> None:
    raw = baseline()
    assert {name: set(values) for name, values in raw.items()} == M7_KEYS


def test_load_config_of_the_baseline_gives_the_seed_values() -> None:
    config = load_config(BASELINE)
    assert config.agent.agent_class == AGENT_CLASS
    assert config.agent.num_agents == 3
    assert config.agent.negotiation_strategy is NegotiationStrategy.AUCTION_BASED
    assert config.agent.cooperation_level is CooperationLevel.HIGH
    assert config.communication.protocol is CommunicationProtocol.DIRECT
    assert config.communication.timeout == 5.0
    assert config.communication.max_message_queue == 100
    assert config.communication.retry_attempts == 3
    assert config.llm.model_name == "gpt-4"
    assert config.llm.temperature == 0.2
    assert config.llm.backend is None  # the deterministic policy unless a backend is named
    assert config.execution.max_total_steps == 400
    assert config.execution.max_steps_per_task == 60
    assert config.execution.negotiation_rounds == 3
    # Every value of the file is what the checked config says (nothing silently defaulted).
    spelled = config.as_dict()
    for section, values in baseline().items():
        assert {key: spelled[section][key] for key in values} == values


def test_from_mapping_of_the_loaded_dict_equals_load_config() -> None:
    assert DecentralizedConfig.from_mapping(baseline()) == load_config(BASELINE)


def test_agent_class_is_our_importable_base_agent_subclass() -> None:
    path = load_config(BASELINE).agent.agent_class
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert cls is AutonomousAgent
    assert issubclass(cls, BaseAgent)


@pytest.mark.parametrize(("section", "key", "value", "says"), [
    ("agent_config", "negotiation_strategy", "voting", "auction_based"),
    ("agent_config", "cooperation_level", 5, "low, medium, high"),
    ("agent_config", "num_agents", 0, ">= 1"),
    ("agent_config", "agent_class", "NotDotted", "dotted path"),
    ("communication_config", "protocol", "carrier-pigeon", "direct, broadcast, gossip"),
    ("communication_config", "timeout", 0, "> 0"),
    ("communication_config", "timeout", "fast", "a number"),
    ("communication_config", "max_message_queue", -1, ">= 1"),
    ("communication_config", "retry_attempts", "3", "an integer"),
    ("communication_config", "retry_attempts", True, "an integer"),
    ("llm_config", "temperature", 7, "<= 2"),
    ("execution", "max_total_steps", 0, ">= 1"),
    ("execution", "max_steps_per_task", 1.5, "an integer"),
    ("execution", "negotiation_rounds", 0, ">= 1"),
])
def test_each_bad_value_is_a_one_line_error_naming_section_key(
        tmp_path: Path, section: str, key: str, value: Any, says: str) -> None:
    raw = with_value(section, key, value)
    with pytest.raises(ConfigError) as direct:
        DecentralizedConfig.from_mapping(raw)
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as loaded:
        load_config(path)
    for error in (direct.value, loaded.value):
        text = str(error)
        assert f"{section}.{key}" in text
        assert says in text
        assert "\n" not in text
    assert str(path) in str(loaded.value)  # the file is named too


def test_a_section_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    raw = baseline()
    raw["communication_config"] = ["direct", 5.0]
    with pytest.raises(ConfigError, match=r"communication_config must be a mapping"):
        load_config(write(tmp_path, raw))


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(write(tmp_path, ["agent_config"]))


@pytest.mark.parametrize(("section", "wrong", "right"), [
    ("agent_config", "negotation_strategy", "negotiation_strategy"),
    ("communication_config", "max_mesage_queue", "max_message_queue"),
    (None, "agent_confg", "agent_config"),
])
def test_a_misspelled_key_says_did_you_mean(tmp_path: Path, section: str | None, wrong: str,
                                            right: str) -> None:
    raw = baseline()
    if section is None:
        raw[wrong] = raw.pop(right)
        expected = f"did you mean {right}?"
    else:
        raw[section][wrong] = raw[section].pop(right)
        expected = f"unknown setting {section}.{wrong}: did you mean {section}.{right}?"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, raw))
    assert expected in str(caught.value)


def test_a_file_that_is_not_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("agent_config: {num_agents: [3\n  cooperation_level: high\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid YAML") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00agent_config")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(missing)
    assert str(missing) in str(caught.value)


def test_foreign_keys_of_a_seed_framework_are_tolerated(tmp_path: Path) -> None:
    raw = baseline()
    raw["agent_config"]["max_history"] = 20
    raw["environment_description"] = "a warehouse"
    raw["execution"]["log_level"] = "debug"
    config = load_config(write(tmp_path, raw))
    assert config == load_config(BASELINE)  # the settings we know are unchanged
    assert config.raw["agent_config"]["max_history"] == 20  # and the rest is kept


def test_missing_sections_take_the_baseline_values() -> None:
    assert DecentralizedConfig.from_mapping({}) == load_config(BASELINE)
    assert DecentralizedConfig.from_mapping(None) == load_config(BASELINE)


def test_an_agent_with_a_bad_config_fails_before_joining_the_mesh() -> None:
    world = GridWorld(num_agents=3, seed=0)
    with pytest.raises(ConfigError, match=r"agent_config\.negotiation_strategy"):
        AutonomousAgent(world, "agent_1", with_value("agent_config", "negotiation_strategy",
                                                     "voting"))
