"""Where the gateway's state lives, typed, with its defaults written once.

The account store, the ledger and the server secret are opened by the server and by every command that
reads them (``keys``, ``accounts``, ``ledger``, ``monitor``, ``intel``), each from the loaded config. Their
keys (``database_url``, ``replica_id``, ``secret``, ``accounts_path``, ``ledger_path``, ``redact_prompts``;
bare names, ``DISTILLGUARD_DATABASE_URL`` and so on) are the fields of :class:`StorageSettings`, built with
:meth:`StorageSettings.from_config`; :class:`~distillguard.gateway.settings.GatewaySettings` takes its
defaults for the same fields from here and hands the server's state over with ``storage()``. The stores
themselves are opened by :func:`~distillguard.gateway.accounts.account_store_from_config` and
:func:`~distillguard.gateway.ledger.ledger_from_config`, which accept either this object or a config dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.config import settings_from_config
from distillguard.errors import UserError
from distillguard.gateway.pg import url_scheme


@dataclass(frozen=True)
class StorageSettings:
    """Field ``f`` is config key ``f`` (no prefix: these names predate the typed settings)."""

    # accounts and ledger: sqlite:///DIR (default: home()/gateway) or postgresql://... shared by every replica
    database_url: str | None = None
    replica_id: str | None = None  # this replica's ledger chain in a shared ledger (default: the host name)
    secret: str | None = None  # keys and ledger heads are keyed with it; None: home()/gateway/secret
    accounts_path: str | None = None  # the SQLite account store (default: <sqlite dir>/accounts.db)
    ledger_path: str | None = None  # the SQLite ledger (default: <sqlite dir>/ledger.db)
    redact_prompts: bool = False  # the ledger keeps prompt hashes, not prompt text

    @classmethod
    def from_config(cls, config: dict[str, Any] | StorageSettings | None, **flags: Any) -> StorageSettings:
        """Defaults < config < ``flags`` (None: not given); a ``StorageSettings`` is returned as it is."""
        if isinstance(config, StorageSettings):
            return settings_from_config(cls, None, "", base=config, **flags) if flags else config
        return settings_from_config(cls, config, "", **flags)

    @property
    def is_postgres(self) -> bool:
        return bool(self.database_url) and url_scheme(str(self.database_url)) == "postgresql"

    def accounts_file(self) -> Path:
        """The SQLite account store's file (meaningless when :attr:`is_postgres`)."""
        if self.accounts_path:
            return Path(self.accounts_path).expanduser()
        return sqlite_dir(self.database_url) / "accounts.db"

    def ledger_file(self) -> Path:
        """The SQLite ledger's file (meaningless when :attr:`is_postgres`)."""
        if self.ledger_path:
            return Path(self.ledger_path).expanduser()
        return sqlite_dir(self.database_url) / "ledger.db"


def sqlite_dir(database_url: str | None) -> Path:
    """The directory of the embedded databases: ``sqlite:///DIR`` (relative; ``sqlite:////DIR`` absolute,
    as in SQLAlchemy) or, without a URL, ``home()/gateway``."""
    from distillguard.config import home

    if not database_url:
        return home() / "gateway"
    if url_scheme(database_url) != "sqlite" or not database_url.startswith("sqlite:///"):
        raise UserError(f"not an SQLite database_url: {database_url!r} (use sqlite:///DIR)")
    rest = database_url[len("sqlite:///") :]
    if not rest:
        raise UserError("database_url sqlite:/// needs a directory (sqlite:///DIR or sqlite:////abs/DIR)")
    return Path(rest).expanduser()
