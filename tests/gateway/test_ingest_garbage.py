"""The gateway's MQTT client leaves no reference cycle behind per message received.

paho's ``Client._handle_on_message`` looks every PUBLISH's topic up in its trie of ``message_callback_add``
filters (``MQTTMatcher.iter_match``), even when there is none, and that lookup makes a recursive closure: a
function, its cells, a list and a tuple in a cycle, which only the cyclic garbage collector frees. At 1,000
messages a second that is thousands of objects for each collection to trace (issue 19: the collections after
a checkpoint, which pauses the collector, took 5-11 ms each on the event loop). ``ingest.make_client`` gives
paho a matcher that answers an empty trie at once and otherwise is paho's own.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.matcher import MQTTMatcher

from gateway.config import MqttConfig
from gateway.ingest import EmptyFastMatcher, make_client


def _garbage_after(calls: int, fn: Any) -> int:
    """Objects only the cyclic collector can free, left by ``calls`` calls of ``fn``."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            fn()
        return gc.collect()
    finally:
        if was:
            gc.enable()


def test_paho_s_own_matcher_leaves_a_cycle_per_lookup() -> None:
    """What the change is for: without it, every lookup of an empty trie leaves garbage."""
    m = MQTTMatcher()
    assert _garbage_after(100, lambda: list(m.iter_match("edgekit/site/dev/readings"))) >= 100


def test_an_empty_matcher_matches_nothing_and_leaves_nothing() -> None:
    m = EmptyFastMatcher()
    assert list(m.iter_match("edgekit/site/dev/readings")) == []
    assert _garbage_after(100, lambda: list(m.iter_match("edgekit/site/dev/readings"))) == 0


FILTERS = ["a/b/c", "a/+/c", "a/#", "#", "+/+/+", "$SYS/#", "+/b/#", "a/b", "x/y/z"]
TOPICS = ["a/b/c", "a/b", "a", "a/x/c", "$SYS/load", "x/y/z", "q/b/r/s", "", "/", "a//c"]


@pytest.mark.parametrize("filters", [FILTERS[:1], FILTERS[:3], FILTERS])
def test_with_filters_it_matches_as_paho_s_own(filters: list[str]) -> None:
    ours, theirs = EmptyFastMatcher(), MQTTMatcher()
    for i, f in enumerate(filters):
        ours[f] = theirs[f] = i
    for topic in TOPICS:
        assert list(ours.iter_match(topic)) == list(theirs.iter_match(topic)), topic
    del ours[filters[0]], theirs[filters[0]]
    for topic in TOPICS:
        assert list(ours.iter_match(topic)) == list(theirs.iter_match(topic)), topic


def _messages(n: int) -> Iterator[MQTTMessage]:
    for i in range(n):
        msg = MQTTMessage(mid=i + 1, topic=b"edgekit/site/dev-0001/readings")
        msg.payload = b'{"v":1}'
        yield msg


async def test_the_gateway_s_client_takes_a_message_without_leaving_garbage() -> None:
    # aiomqtt's client is made inside a running event loop
    client = make_client(MqttConfig(host="127.0.0.1", port=1883, client_id="garbage-test"))
    paho = client._client
    got: list[MQTTMessage] = []
    paho.on_message = lambda _c, _u, m: got.append(m)
    msgs = list(_messages(200))
    it = iter(msgs)
    assert _garbage_after(200, lambda: paho._handle_on_message(next(it))) == 0
    assert got == msgs  # every message still reaches the callback
