"""Typed application state: the `web.AppKey`s through which handlers reach shared objects."""

from typing import Final

from aiohttp import web

from .config import Config
from .hosts import AllowedHosts
from .hubs.local import Hub
from .push import PushSender
from .stores.base import Store
from .throttle import PasswordPool, Throttle

config_key: Final = web.AppKey("config", Config)
store_key: Final = web.AppKey("store", Store)
hub_key: Final = web.AppKey("hub", Hub)
throttle_key: Final = web.AppKey("throttle", Throttle)
password_pool_key: Final = web.AppKey("password_pool", PasswordPool)
# The UTF-8 bytes of the password pre-hash key (auth.load_password_key).
password_hmac_key: Final = web.AppKey("password_hmac", bytes)
allowed_hosts_key: Final = web.AppKey("allowed_hosts", AllowedHosts)
# SPEC 9: the Web Push sender (chatserver/push.py), started by app.push_ctx.
push_key: Final = web.AppKey("push", PushSender)
