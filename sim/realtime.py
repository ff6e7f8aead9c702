"""Replay a run's deliveries through a real MQTT broker, in arrival order, in (scaled) real time.

Delivery ``i`` is published ``(arrival_i - arrival_0) / speed`` seconds after the first (``speed = 0``:
as fast as the broker acknowledges, order kept). One client publishes for the whole fleet at QoS 1,
statuses retained, at most ``max_in_flight`` unacknowledged; the order of publication is the order the
gateway receives them in, which is what the ground truth assumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiomqtt

from .errors import PublishError, SpecError
from .publish import BrokerConfig, make_client
from .world import Delivery

__all__ = ["replay"]


async def replay(
    deliveries: Sequence[Delivery],
    broker: BrokerConfig,
    *,
    client_id: str = "edgekit-sim",
    speed: float = 0.0,
    max_in_flight: int = 64,
    timeout_s: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Publish every delivery; returns the seconds it took. Raises :class:`PublishError` on failure.
    ``progress(done, total)`` is called as each delivery is handed to the client."""
    if speed < 0:
        raise SpecError(f"speed must not be negative, got {speed}")
    started = time.monotonic()
    client = make_client(broker, client_id, timeout_s, max_in_flight)
    pending: set[asyncio.Task[None]] = set()
    try:
        async with client:
            first = deliveries[0].arrival_ms if deliveries else 0
            for n, d in enumerate(deliveries, 1):
                if speed > 0:
                    due = started + (d.arrival_ms - first) / 1000 / speed
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if len(pending) >= max_in_flight:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                pending.add(asyncio.create_task(client.publish(d.topic, d.payload, qos=1, retain=d.retain)))
                if progress is not None:
                    progress(n, len(deliveries))
            if pending:
                for result in await asyncio.gather(*pending, return_exceptions=True):
                    if isinstance(result, BaseException):
                        raise result
    except aiomqtt.MqttError as exc:
        raise PublishError(f"broker {broker.describe()}: {exc}") from exc
    finally:
        for task in pending:
            task.cancel()
    return time.monotonic() - started
