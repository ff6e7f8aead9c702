"""paho's MQTT 5 ``Properties`` with shared tables (``ingest.share_property_tables``) behave as paho's own.

Every property paho knows is set on an object of each packet type it applies to, packed, and read back by
an object of each kind; the bytes and the values read must be the same as with paho's unpatched class.
"""

from __future__ import annotations

from typing import Any

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

    assert _exercise(PahosOwn) == _exercise(Properties)
    a, b = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    assert a.names is b.names and a.properties is b.properties
    assert PahosOwn(PacketTypes.PUBLISH).names is not a.names
