"""A self-hosted, phone-number chat server: a store-and-forward relay on aiohttp."""

__version__ = "0.1.0"
