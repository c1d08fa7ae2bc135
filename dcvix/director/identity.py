"""What directors sharing one store must share: one CA and one token key.

Agents trust one CA, and a login token made by one director must verify on
every other, so a director joining a PostgreSQL store must use the files of
the others (``ca.key``, ``ca.pem``, ``token.key``). The first director records
the CA's fingerprint and a check value of the token key in the store (an HMAC
made with the key, never the key); every later start compares, and a director
with another CA or another key refuses to start, naming what differs. All of
it happens under the engine's start lock, so two directors starting on an
empty database never make two CAs.
"""

from __future__ import annotations

import hashlib
import hmac

from dcvix.common.daemon import StartupError
from dcvix.director.registry import StoreError
from dcvix.director.registry.engine import Engine
from dcvix.director.registry.sql import identity_txn, record_identity_txn, states_txn

CA_FINGERPRINT = "ca_fingerprint"
TOKEN_KEY_CHECK = "token_key_check"  # noqa: S105 - a row name, not a secret
_CHECK_MESSAGE = b"dcvix token key check, version 1"
COPY_FILES = (
    "copy ca.key, ca.pem and token.key from a director of this store (see the README)"
)


def token_key_check(key: bytes) -> str:
    """A value that tells two keys apart and says nothing about either."""
    return hmac.new(key, _CHECK_MESSAGE, hashlib.sha256).hexdigest()


def store_claim(engine: Engine) -> str:
    """Why no new CA may be made for this store; "" when one may.

    Raises:
        StartupError: the store cannot be read.
    """
    try:
        recorded = engine.call(identity_txn)
        held = len(engine.call(states_txn))
    except StoreError as error:
        raise StartupError(str(error)) from None
    if recorded.get(CA_FINGERPRINT):
        return f"the store belongs to the CA {recorded[CA_FINGERPRINT]}"
    if held:
        return (
            f"the store already holds {held} agents enrolled with another director's CA"
        )
    return ""


def check_identity(engine: Engine, ca_fingerprint: str, token_key: bytes) -> None:
    """Record this director's identity if it is the first; else compare.

    Raises:
        StartupError: the store's CA or token key is another (both named).
    """
    ours = {CA_FINGERPRINT: ca_fingerprint, TOKEN_KEY_CHECK: token_key_check(token_key)}
    try:
        engine.call(record_identity_txn, ours)
        recorded = engine.call(identity_txn)
    except StoreError as error:
        raise StartupError(str(error)) from None
    differs = []
    if recorded[CA_FINGERPRINT] != ca_fingerprint:
        differs.append(
            f"its CA is {recorded[CA_FINGERPRINT]}, this director's "
            f"{ca_fingerprint} (ca.key, ca.pem)"
        )
    if recorded[TOKEN_KEY_CHECK] != ours[TOKEN_KEY_CHECK]:
        differs.append("its token key is another (token.key, or [director] token_key)")
    if differs:
        raise StartupError(
            f"{engine.label} is shared with other directors, but "
            + "; ".join(differs)
            + f": refusing to start; {COPY_FILES}"
        )
