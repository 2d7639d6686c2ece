"""Tenants of the server: which API key a request carried, and what that scopes (programs, prefix cache).

With API keys set, each key is a tenant, named by a digest of the key (never the key itself). A tenant's
``program_id`` is scoped to it (another tenant cannot read, pin or end it), and with
``--cache-isolation per-key`` its ``cache_salt`` too, so tenants never share prefix-cache blocks
(vLLM's ``cache_salt``; the salt enters the first block's hash).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

CACHE_ISOLATION = ("none", "per-key")


def tenant_of(token: str, keys: list[str]) -> str | None:
    """The tenant whose key equals ``token`` (every key compared in constant time), or None."""
    found = None
    for key in keys:
        if hmac.compare_digest(token.encode(), key.encode()):
            found = key
    return None if found is None else hashlib.sha256(found.encode()).hexdigest()[:16]


def scoped_program(tenant: str | None, program_id: str | None) -> str | None:
    """The engine's id of a tenant's program (the client's id when no key is set)."""
    if program_id is None or tenant is None:
        return program_id
    return f"{tenant}/{program_id}"


def scoped_salt(tenant: str | None, cache_salt: str | None, isolation: str) -> str | None:
    """The ``cache_salt`` the engine sees: the tenant's digest is added under ``per-key`` isolation."""
    if isolation != "per-key" or tenant is None:
        return cache_salt
    return f"{tenant}:{cache_salt or ''}"


def request_tenant(raw: Any) -> str | None:
    """The tenant the auth middleware found for a request (``raw``: a Starlette request; None without keys)."""
    return getattr(raw.state, "tenant", None)
