"""An LLM-driven AutonomousAgent: the real openai SDK against a local Chat Completions server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from decentralized_support import baseline

from agoramesh.modes.decentralized.autonomous_agent import AutonomousAgent
from agoramesh.sim import GridWorld
from agoramesh.testing.fake_http import FakeHTTPServer, Rendered

pytestmark = pytest.mark.integration


def _chat_sse(text: str) -> Rendered:
    def chunk(delta: dict[str, Any], finish: str | None = None,
              usage: dict[str, int] | None = None) -> bytes:
        choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}]
        body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-test", "choices": choices, "usage": usage}
        return f"data: {json.dumps(body)}\n\n".encode()

    payload = (chunk({"role": "assistant", "content": ""}) + chunk({"content": text})
               + chunk({}, "stop")
               + chunk({}, usage={"prompt_tokens": 50, "completion_tokens": 5,
                                  "total_tokens": 55})
               + b"data: [DONE]\n\n")
    return Rendered(200, "text/event-stream", payload)


def test_the_model_picks_commands_and_the_planner_overrules_invalid_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")
    config = baseline()
    simulator = GridWorld(num_agents=3, seed=4)
    with FakeHTTPServer(_chat_sse) as server:
        server.script = ["Let me look around first.\nAction: WAIT", "Action: FLY to the moon"]
        config["llm_config"].update(backend="openai", base_url=f"{server.url}/v1",
                                    api_key_env="TEST_OPENAI_KEY", model_name="gpt-test")
        config["communication_config"]["timeout"] = 2.0
        agents = [AutonomousAgent(simulator, f"agent_{i + 1}", config) for i in range(3)]
        try:
            for agent in agents:
                agent.set_peer_agents([a for a in agents if a is not agent])
                agent.set_task(simulator.task_description())
            for _ in range(400):
                for agent in agents:
                    action = agent.decide_action()
                    agent.step()
                    if "DONE" in action:
                        break
                if simulator.is_done():
                    break
            assert simulator.evaluate()["success"] is True
            first = agents[0]
            assert first.history[0]["action"] == "WAIT"  # the model's valid choice stood
            calls = sum(a.counts["llm_calls"] for a in agents)
            fallbacks = sum(a.counts["llm_fallbacks"] for a in agents)
            assert len(server.requests) == calls
            assert fallbacks == calls - 1  # every "FLY" was overruled by the planner
            request = server.requests[0]
            assert request.path == "/v1/chat/completions"
            assert request.headers["authorization"] == "Bearer sk-test"
            assert request.body["model"] == "gpt-test"
            prompt = request.body["messages"][-1]["content"]
            assert "agent_1" in prompt and "Available actions" in prompt
            assert simulator.describe("agent_1").splitlines()[0][:20] in prompt
        finally:
            for agent in agents:
                agent.close()
