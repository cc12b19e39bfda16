"""The admin API (``/admin``): its routes and bodies (no unknown fields, finite numbers, valid unicode,
bounded strings). The admin token is checked by :class:`http_limits.HTTPGuard` before any body is read, and
again by each route's dependency."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from distillguard.errors import UserError
from distillguard.gateway.chain import chains_json
from distillguard.gateway.http_limits import admin_refusal
from distillguard.gateway.limits import Limits
from distillguard.gateway.protocol import APIError
from distillguard.gateway.responses import json_response


class AdminBody(BaseModel):
    """Admin inputs: no unknown fields, finite numbers, strings that are valid unicode (no lone
    surrogates: they cannot be stored) and of bounded length."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=1000)

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, v: Any) -> Any:
        for s in v if isinstance(v, list) else [v]:
            if isinstance(s, str):
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("must be valid unicode (no lone surrogates)") from None
        return v


class KeyCreate(AdminBody):
    account: str
    org: str | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    daily_tokens: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    expires_at: float | None = Field(None, ge=0, le=1e11)
    models: list[str] | None = Field(None, max_length=1000)
    name: str | None = None


class BanBody(AdminBody):
    reason: str | None = None


class TierBody(AdminBody):
    tier: str
    reason: str | None = None


class LimitsBody(AdminBody):
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    daily_tokens: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)


def add_admin_routes(app: FastAPI, gw: Any) -> None:
    """Mount the admin routes for gateway ``gw``."""

    def require_admin(request: Request) -> None:
        # HTTPGuard checks the token before the body is read; checked again here for routes mounted later
        err = admin_refusal(gw.settings.admin_token, request.headers.get("authorization", ""))
        if err is not None:
            raise err

    admin = [Depends(require_admin)]

    async def store_call(fn, *args, **kwargs) -> Any:  # in a store thread (gw.store_call), off the loop
        try:
            return await gw.store_call(fn, *args, **kwargs)
        except UserError as exc:
            status = 404 if str(exc).startswith("unknown ") and "tier" not in str(exc) else 400
            raise APIError(status, str(exc), code="not_found" if status == 404 else "invalid_value") from None

    @app.post("/admin/keys", dependencies=admin, summary="Create an API key")
    async def admin_create_key(body: KeyCreate) -> Response:
        key, key_id = await store_call(gw.accounts.create_key, **body.model_dump())
        return json_response({"key": key, "key_id": key_id})

    @app.get("/admin/keys", dependencies=admin, summary="List API keys")
    async def admin_list_keys(account: str | None = None) -> Response:
        return json_response({"object": "list", "data": await store_call(gw.accounts.list_keys, account)})

    @app.delete("/admin/keys/{key_id}", dependencies=admin, summary="Revoke an API key")
    async def admin_revoke_key(key_id: str) -> Response:
        await store_call(gw.accounts.revoke_key, key_id)
        return json_response({"key_id": key_id, "revoked": True})

    @app.get("/admin/accounts", dependencies=admin, summary="List accounts")
    async def admin_list_accounts() -> Response:
        return json_response({"object": "list", "data": await store_call(gw.accounts.list_accounts)})

    @app.get("/admin/accounts/{account}", dependencies=admin, summary="Get an account")
    async def admin_get_account(account: str) -> Response:
        return json_response(await store_call(gw.accounts.get_account, account))

    @app.post("/admin/accounts/{account}/ban", dependencies=admin, summary="Ban an account")
    async def admin_ban(account: str, body: BanBody | None = None) -> Response:
        await store_call(gw.accounts.ban, account, (body or BanBody()).reason, actor="admin-api")
        return json_response(await store_call(gw.accounts.get_account, account))

    @app.post("/admin/accounts/{account}/unban", dependencies=admin, summary="Lift a ban")
    async def admin_unban(account: str) -> Response:
        await store_call(gw.accounts.unban, account, actor="admin-api")
        return json_response(await store_call(gw.accounts.get_account, account))

    @app.put("/admin/accounts/{account}/tier", dependencies=admin, summary="Set an account's tier")
    async def admin_tier(account: str, body: TierBody) -> Response:
        await store_call(gw.accounts.set_tier, account, body.tier, body.reason, actor="admin-api")
        return json_response(await store_call(gw.accounts.get_account, account))

    @app.put("/admin/accounts/{account}/limits", dependencies=admin, summary="Set an account's limits")
    async def admin_limits(account: str, body: LimitsBody) -> Response:
        await store_call(
            gw.accounts.set_account_limits, account, Limits(**body.model_dump()), actor="admin-api"
        )
        return json_response(await store_call(gw.accounts.get_account, account))

    @app.get("/admin/ledger/verify", dependencies=admin, summary="Verify the ledger's hash chain")
    async def admin_verify() -> Response:
        """Every chain's status (a shared ledger has one per replica) and, at the top, the first bad one's."""
        reports = await anyio.to_thread.run_sync(gw.ledger.verify_chains)
        return json_response(chains_json(reports))
