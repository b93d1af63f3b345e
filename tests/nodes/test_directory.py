"""The soft-state directory: peers evicted for silence are remembered for a while as
lapsed (they may only be paused), and forgotten once heard from, gone with a bye or
too old."""

from __future__ import annotations

from agoramesh.bus.identity import Identity
from agoramesh.nodes.card import AgentCard, AgentStatus, Capability
from agoramesh.nodes.directory import Directory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def card(name: str, *capabilities: str) -> AgentCard:
    return AgentCard(id=Identity.generate().agent_id, name=name, type="worker", version="1",
                     endpoint="", capabilities=tuple(Capability(name=c) for c in capabilities))


def test_a_peer_evicted_for_silence_is_lapsed_until_heard_from_again() -> None:
    clock = Clock()
    directory = Directory(missed=3, clock=clock)
    coder, writer = card("coder", "code.python"), card("writer", "text.write")
    for peer in (coder, writer):
        directory.seen(peer, AgentStatus(), 1.0)
    assert directory.lapsed("code.*", 30) == frozenset()
    clock.now += 3.5
    assert set(directory.evict_silent()) == {coder.id, writer.id}
    assert directory.capable("code.*") == frozenset()
    assert directory.lapsed("code.*", 30) == {coder.id}  # by capability, like capable()
    assert directory.lapsed("*.*", 30) == {coder.id, writer.id}
    directory.seen(coder, AgentStatus(), 1.0)  # it resumed: known again, not lapsed
    assert directory.capable("code.*") == {coder.id}
    assert directory.lapsed("*.*", 30) == {writer.id}


def test_a_bye_or_age_forgets_a_lapsed_peer() -> None:
    clock = Clock()
    directory = Directory(missed=3, clock=clock)
    gone, old = card("gone", "work.do"), card("old", "work.do")
    for peer in (gone, old):
        directory.seen(peer, AgentStatus(), 1.0)
    clock.now += 4
    directory.evict_silent()
    assert directory.lapsed("work.do", 30) == {gone.id, old.id}
    assert not directory.remove(gone.id)  # its bye, after the eviction: it left
    assert directory.lapsed("work.do", 30) == {old.id}
    clock.now += 31
    assert directory.lapsed("work.do", 30) == frozenset()
    clock.now -= 31  # forgotten, not only filtered out
    assert directory.lapsed("work.do", 30) == frozenset()


def test_agents_of_a_host_that_said_bye_are_not_lapsed() -> None:
    clock = Clock()
    directory = Directory(missed=3, clock=clock)
    host = Identity.generate().agent_id
    hosted, own = card("hosted", "work.do"), card("own", "work.do")
    directory.seen(hosted, AgentStatus(), 1.0, host=host)
    directory.seen(own, AgentStatus(), 1.0)
    clock.now += 4
    directory.evict_silent()
    assert directory.lapsed("work.do", 30) == {hosted.id, own.id}
    assert directory.remove_hosted(host) == []  # none left among the peers
    assert directory.lapsed("work.do", 30) == {own.id}


def test_a_peer_that_said_bye_is_not_lapsed() -> None:
    directory = Directory(missed=3, clock=Clock())
    peer = card("polite", "work.do")
    directory.seen(peer, AgentStatus(), 1.0)
    assert directory.remove(peer.id, "bye")
    assert directory.lapsed("work.do", 30) == frozenset()
