"""Labeler accounts for the web app: create one with a password or an invite link, renew an
invite, activate or deactivate. Shared by the admin pages and `tether labelers ...`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.errors import TetherError
from tether.web.security import hash_password, new_invite

WEB_ROLES = ("labeler", "admin")


def add_labeler(s: Session, name: str, role: str = "labeler", password: str | None = None,
                groups: dict | None = None) -> tuple[S.Labeler, str | None]:
    """A new web labeler; returns (labeler, invite token) — the token is None when a password was
    given. An existing labeler of that name without a login (e.g. from imported labels) is upgraded."""
    name = name.strip()
    if not name or len(name) > 255 or "\x00" in name:
        raise TetherError("name: 1 to 255 characters (no NUL), please")
    if role not in WEB_ROLES:
        raise TetherError(f"role: expected one of {', '.join(WEB_ROLES)}, got {role!r}")
    lab = s.scalar(select(S.Labeler).where(S.Labeler.name == name))
    if lab is not None and (lab.password_hash or lab.invite_token):
        raise TetherError(f"name: a labeler called {name!r} already has a login")
    if lab is not None and lab.role not in (*WEB_ROLES, "import"):
        raise TetherError(f"name: {name!r} is a {lab.role} labeler, not a person; choose another name")
    if lab is None:
        lab = S.Labeler(name=name, role=role, groups=groups or {})
        s.add(lab)
    lab.role, lab.active = role, True
    token = None
    if password:
        try:
            lab.password_hash = hash_password(password)
        except ValueError as e:
            raise TetherError(str(e)) from None
    else:
        token, lab.invite_token = new_invite()
    s.flush()
    return lab, token


def renew_invite(s: Session, labeler_id: int) -> str:
    """A fresh invite link for a labeler (the old link and password stop working)."""
    lab = s.get(S.Labeler, labeler_id)
    if lab is None or lab.role not in WEB_ROLES:
        raise TetherError(f"no web labeler with id {labeler_id}")
    token, lab.invite_token = new_invite()
    lab.password_hash = None
    return token


def set_active(s: Session, labeler_id: int, active: bool) -> S.Labeler:
    lab = s.get(S.Labeler, labeler_id)
    if lab is None:
        raise TetherError(f"no labeler with id {labeler_id}")
    lab.active = active
    return lab
