"""Helpers the web tests share: seed data, accounts, tasks."""

from __future__ import annotations

XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "quotes"'
PASSWORD = "correct horse battery"


def seed(store) -> None:
    """6 prompts x (2 responses from policy-a in round 0 + 2 from policy-b in round 1); the first
    response carries script and onerror payloads."""
    from tether.data import schema as S

    with store.session() as s:
        for i in range(6):
            p, _ = store.get_or_add_prompt(s, f"Prompt number {i}: name a colour.", None)
            for j in range(4):
                text = XSS if (i, j) == (0, 0) else f"Answer {j} to prompt {i}: the sky is blue."
                s.add(S.Response(prompt_id=p.id, text=text, policy="policy-a" if j < 2 else "policy-b",
                                 round=0 if j < 2 else 1, finished=j != 3))


def add_accounts(store) -> None:
    from tether.web.accounts import add_labeler

    with store.session() as s:
        for name, role in (("alice", "labeler"), ("bob", "labeler"), ("root", "admin")):
            add_labeler(s, name, role, PASSWORD)


def make_tasks(store, kind: str, labels_needed: int = 1, limit: int | None = None, **kw) -> list[int]:
    from tether.web.tasks import TaskSpec, create_tasks

    with store.session() as s:
        return [t.id for t in create_tasks(s, TaskSpec(kind=kind, labels_needed=labels_needed, limit=limit, **kw))]


