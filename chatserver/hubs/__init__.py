"""The hub: who is connected, and delivery to them (docs/hub.md). `make_hub(config)` is the one
place that chooses the broker and presence from `[hub] url`."""

from __future__ import annotations

from ..config import REDIS_SCHEMES, Config
from .broker import Broker, LocalBroker, LocalPresence, Presence
from .local import Hub


def make_hub(config: Config) -> Hub:
    """The hub `config` asks for: in one process when `[hub] url` is empty, else shared by every
    process on the Redis at that URL (redis://, rediss://, unix://) under `[hub] prefix`.

    Raises ValueError for a URL of another scheme (load_config refuses it first).
    """
    url = config.hub.url
    broker: Broker
    presence: Presence
    if not url:
        broker, presence = LocalBroker(), LocalPresence()
    elif url.startswith(REDIS_SCHEMES):
        from .redis import redis_parts  # redis-py is loaded only by deployments that use it
        broker, presence = redis_parts(url, config.hub.prefix)
    else:
        raise ValueError(f"[hub] url: no hub engine for {url.split(':', 1)[0]!r}")
    return Hub(config.limits.outgoing_queue, config.websocket.close_timeout, broker, presence,
               config.limits.sockets_per_user)
