"""SCRAM-SHA-256 verifiers: how LocalPostgres sets a password the server never sees."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os


def scram_sha_256_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, 7677), what
    ``ALTER ROLE ... PASSWORD`` accepts in place of the password itself (ASCII passwords:
    PostgreSQL's SASLprep leaves them unchanged)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
