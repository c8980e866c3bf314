"""Passwords, invite links, the session secret and CSRF tokens for the labeling web app.

Passwords are hashed with the stdlib's scrypt (no native dependency beyond OpenSSL); invite tokens
are random, shown once, and stored only as their SHA-256, so a copy of the database does not hand
out working links. The session secret lives in the workspace (`web_secret`, mode 0600), generated
on first use, so every uvicorn worker signs cookies with the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

# scrypt cost: 2**14 x 8 x 1 takes ~16 MiB and ~30-60 ms per hash on a laptop core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8
SECRET_FILE = "web_secret"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash` for storage in `Labeler.password_hash`."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: at least {MIN_PASSWORD} characters, please")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches the stored hash (constant-time comparison)."""
    if not stored:
        hashlib.scrypt(b"x", salt=b"0" * 16, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024)
        return False  # same work as a real check, so timing does not tell which names exist
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def new_invite() -> tuple[str, str]:
    """(token for the link, value to store in `Labeler.invite_token`)."""
    token = secrets.token_urlsafe(24)
    return token, invite_digest(token)


def invite_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def workspace_secret(root: Path) -> str:
    """The workspace's session-signing secret, created once with mode 0600."""
    path = Path(root) / SECRET_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path}: the session secret is too short; delete the file to make a new one")
    return secret


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time check of a submitted CSRF token against the session's."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
