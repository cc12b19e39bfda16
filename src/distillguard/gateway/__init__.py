"""The OpenAI-compatible gateway and the state it keeps.

State layer (no HTTP, no torch; importable by the monitor and the CLI without pulling in the server):

- ``accounts``: orgs, accounts, API keys (stored only as HMAC-SHA256 under a server secret), policy tiers,
  bans; ``AccountStore.authenticate`` turns a presented key into a ``Principal``. SQLite (embedded) or
  PostgreSQL (shared by replicas), opened from ``database_url``; ``pg``: the Postgres connection pool.
- ``tiers``: the response ladder as objects (what each tier does to limits, requests and the watermark,
  and the monitor's threshold for it) and their registry; ``limits``: the ``Limits`` value they share.
- ``quotas``: RPM / TPM / daily-token / concurrency limits enforced by reserve-then-commit, in memory
  (one process) or in Redis (several processes share one limit).
- ``ipfilter``: CIDR allow/deny lists and the client IP behind trusted proxies.
- ``ledger``: the append-only, hash-chained query ledger (SQLite WAL) with verify and Parquet export, and the
  ``LedgerStore`` protocol; ``ledger_pg``: the ledger shared by replicas in PostgreSQL (a chain each);
  ``chain``: the hash chain and MACs as pure functions; ``ledger_export``: the Parquet schema and writer.
- ``cli``: the admin commands ``distillguard keys|accounts|ledger``.

The HTTP server (FastAPI app, backends, ``serve``) lives in sibling modules and imports these.
Nothing is imported here so that ``import distillguard.gateway.accounts`` stays light.
"""
