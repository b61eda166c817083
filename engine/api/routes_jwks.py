"""``GET /.well-known/jwks.json``: the public keys of the engine's own signing keys (RFC 7517 §5).

Open, without a token: an EHR (Epic fetches the JWKS URL registered for a backend app, or the
``jku`` of a client assertion) reads it to check the engine's client assertions. It lists the
active and previous keys of ``VAR_DIR/keys`` (engine/keys), public members only, and may be cached
for ``MAX_AGE_S`` seconds, so a rotated key reaches verifiers within minutes. These are not the
keys that check tokens presented to this API (engine/api/keys.py).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from engine.api.deps import SettingsDep
from engine.keys import JWKS_PATH, SigningKeyError, keyring_for

__all__ = ["MAX_AGE_S", "router"]

log = logging.getLogger(__name__)

MAX_AGE_S = 300

router = APIRouter()


@router.get(JWKS_PATH)
def engine_jwks(settings: SettingsDep) -> JSONResponse:
    """The engine's public signing keys; 503 when the key index cannot be read."""
    try:
        document = keyring_for(settings).jwks()
    except SigningKeyError as exc:
        log.error("signing key index unreadable", extra={"error": str(exc)})
        return JSONResponse(
            {"detail": "signing keys unavailable"},
            status_code=503,
            headers={"Cache-Control": "no-store"},
        )
    return JSONResponse(
        document,
        headers={"Cache-Control": f"public, max-age={MAX_AGE_S}"},
    )
