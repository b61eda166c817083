"""The engine's own signing keys (for SMART Backend Services client assertions) and their JWKS.

Not the API's token-verification keys: those are engine/api/keys.py.
"""

from engine.keys.assertion import (
    CLIENT_ASSERTION_TYPE,
    JWKS_PATH,
    MAX_LIFETIME_S,
    client_assertion,
    client_assertion_for,
    jwks_url,
    keyring_for,
)
from engine.keys.keyring import (
    ACTIVE,
    ALGORITHMS,
    PREVIOUS,
    RETIRED,
    KeyRecord,
    Keyring,
    SigningKey,
    SigningKeyError,
    thumbprint,
)

__all__ = [
    "ACTIVE",
    "ALGORITHMS",
    "CLIENT_ASSERTION_TYPE",
    "JWKS_PATH",
    "MAX_LIFETIME_S",
    "PREVIOUS",
    "RETIRED",
    "KeyRecord",
    "Keyring",
    "SigningKey",
    "SigningKeyError",
    "client_assertion",
    "client_assertion_for",
    "jwks_url",
    "keyring_for",
    "thumbprint",
]
