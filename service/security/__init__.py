"""Who may do what: TLS, API keys with roles, and the one place that checks them.

- ``keys``: the key format and its hash (what is stored).
- ``roles``: the roles' rights and the one table of RPC -> required right.
- ``keyring``: the keys in memory, refreshed from the store every few seconds.
- ``auth_interceptor``: authenticates and authorizes every call (``Authorization``).
- ``tls``: the server's TLS credentials (reloaded when the files change).
- ``exposure``: the safe default (open only on loopback) and the hook secret.
- ``audit``: the log of key, schedule and version changes.

See docs/security.md.
"""
