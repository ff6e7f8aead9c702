"""paho's MQTT 5 ``Properties`` with shared tables (``ingest.share_property_tables``) behave as paho's own.

Every property paho knows is set on an object of each packet type it applies to, packed, and read back by
an object of each kind; the bytes and the values read must be the same as with paho's unpatched class. An
object that already holds properties reads others (``unpack`` clears it first, as ``clear`` alone does) and
ends as paho's own would, for any set of properties held and read.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest import share_property_tables

SAMPLE = {
    "Byte": 1,
    "Two Byte Integer": 513,
    "Four Byte Integer": 70_000,
    "Variable Byte Integer": 300,
    "Binary Data": b"\x00\x01bin",
    "UTF-8 Encoded String": "text/é",
    "UTF-8 String Pair": ("key", "valué"),
}


def _exercise(cls: Any) -> list[object]:
    out: list[object] = []
    model = cls(PacketTypes.PUBLISH)
    for name, ident in model.names.items():
        kind, packets = model.properties[ident]
        for packet in packets:
            props = cls(packet)
            value = SAMPLE[model.types[kind]]
            setattr(props, name, [value] if model.allowsMultiple(name.replace(" ", "")) else value)
            packed = props.pack()
            back = cls(packet)
            back.unpack(packed)
            out.append((name, packet, packed, str(back), back.json(), back.isEmpty()))
    empty = cls(PacketTypes.PUBLISH)
    empty.unpack(empty.pack())
    out.append(("empty", empty.pack(), empty.isEmpty(), str(empty)))
    return out


def test_shared_tables_pack_and_read_every_property_as_paho_does() -> None:
    share_property_tables()
    share_property_tables()  # idempotent
    cls: Any = Properties

    class PahosOwn(Properties):  # type: ignore[misc]
        __init__ = cls._edgekit_own_init
        clear = cls._edgekit_own_clear

    assert _exercise(PahosOwn) == _exercise(Properties)
    a, b = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    assert a.names is b.names and a.properties is b.properties
    assert PahosOwn(PacketTypes.PUBLISH).names is not a.names


def _pahos_own() -> Any:
    share_property_tables()
    cls: Any = Properties

    class PahosOwn(Properties):  # type: ignore[misc]
        __init__ = cls._edgekit_own_init
        clear = cls._edgekit_own_clear

    return PahosOwn


_MODEL: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_PUBLISH_NAMES = sorted(n for n, i in _MODEL.names.items() if PacketTypes.PUBLISH in _MODEL.properties[i][1])


def _state(props: Any) -> dict[str, object]:
    return {k: v for k, v in vars(props).items() if k not in ("types", "names", "properties")}


def _set(props: Any, names: list[str]) -> None:
    for name in names:
        value = SAMPLE[_MODEL.types[_MODEL.properties[_MODEL.names[name]][0]]]
        setattr(props, name, [value] if props.allowsMultiple(name.replace(" ", "")) else value)


@settings(max_examples=300, deadline=None)
@given(
    held=st.lists(st.sampled_from(_PUBLISH_NAMES), unique=True),
    read=st.lists(st.sampled_from(_PUBLISH_NAMES), unique=True),
    how=st.sampled_from(["unpack", "clear"]),
)
def test_an_object_holding_properties_reads_and_clears_as_pahos_own(held: list[str], read: list[str], how: str) -> None:
    own = _pahos_own()
    source = own(PacketTypes.PUBLISH)
    _set(source, read)
    packed = source.pack()
    ends = []
    for cls in (own, Properties):
        props = cls(PacketTypes.PUBLISH)
        _set(props, held)
        props.unpack(packed) if how == "unpack" else props.clear()
        ends.append((_state(props), str(props), props.isEmpty(), props.pack()))
    assert ends[0] == ends[1]
    if how == "clear" or not read:
        assert ends[1][2], "cleared or nothing read: empty"


def test_clear_removes_what_is_set_on_the_object_only() -> None:
    share_property_tables()
    props: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = 5
    props.UserProperty = ("a", "b")
    object.__setattr__(props, "other", 1)  # not a property: paho's clear leaves it too
    props.clear()
    assert _state(props) == {"packetType": PacketTypes.PUBLISH, "other": 1}
    with pytest.raises(AttributeError):
        props.MessageExpiryInterval  # noqa: B018
