"""The tests' helpers, one module per purpose (imported as `from helpers.ws import recv`):

- `frames`: phones, client instants, timestamp forms, the one frame builder, error-frame checks
- `ws`: WebSocket clients of an in-process server (timed receives, sockets proven served)
- `groups`: group sockets, the group endpoints, stored group messages
- `accounts`: the password, logging in (in-process), browser-like clients of a server process
- `configs`: Config changes (in-process) and TOML tables for a server process
- `backends`: the store/hub engines a test runs on (the `backends` marker), database reads
- `server`: the one server-process harness (no pytest: bench/ uses it too), free_port
- `procs`: what /proc says about server processes and their connections
- `chatload`: chat loads with a ledger (crash, shutdown, scale-out), a latency-measuring pair
- `rawws`: a WebSocket client on a raw TCP socket (slow peers)
- `timing`: the tests' timeouts and `until`
"""
