"""Many labelers at once against the live server, on SQLite and PostgreSQL: every answer stored
exactly once, every task labelled by exactly `labels_needed` different labelers."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from tether.data import schema as S
from websupport import PASSWORD, make_tasks, seed

LABELERS, OVERLAP = 6, 3


@pytest.fixture(params=["sqlite", "postgres"])
def busy_ws(request, tmp_path):
    """A workspace on each backend with 12 pairwise tasks x 3 labels and 6 labelers."""
    from tether.web.accounts import add_labeler
    from tether.web.security import hash_password
    from tether.workspace import init_workspace

    url = None if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    ws = init_workspace(tmp_path / "ws", database=url)
    store = ws.store()
    seed(store)
    hashed = hash_password(PASSWORD)
    with store.session() as s:
        for i in range(LABELERS):
            lab, _ = add_labeler(s, f"l{i}", password="placeholder-password")
            lab.password_hash = hashed  # one scrypt instead of six
    make_tasks(store, "pairwise", labels_needed=OVERLAP, per_prompt=2)
    yield ws, store
    store.close()


@pytest.fixture
def busy_server(busy_ws):
    import uvicorn

    from conftest import _free_port
    from tether.web import create_app

    ws, store = busy_ws
    app = create_app(ws.root, store=store)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_labelers_store_each_answer_once(busy_server):
    base, store = busy_server
    answered: dict[str, list[int]] = {}
    errors: list[str] = []

    def labeler(name: str) -> None:
        try:
            with httpx.Client(base_url=base, timeout=30) as c:
                csrf = c.post("/api/login", json={"name": name, "password": PASSWORD}).json()["csrf_token"]
                mine, task = [], c.get("/api/tasks/next").json()["task"]
                while task is not None:
                    r = c.post(f"/api/tasks/{task['id']}/label?next=true", json={"choice": "a"},
                               headers={"X-CSRF-Token": csrf})
                    assert r.status_code == 201, r.text
                    mine.append(task["id"])
                    task = r.json()["next"]
                answered[name] = mine
        except Exception as e:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(f"{name}: {e!r}")

    threads = [threading.Thread(target=labeler, args=(f"l{i}",)) for i in range(LABELERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for name, mine in answered.items():
        assert len(mine) == len(set(mine)), f"{name} got a task twice"
    per_task = Counter(t for mine in answered.values() for t in mine)
    with store.session() as s:
        n_tasks = s.scalar(select(func.count()).select_from(S.Task))
        stored = Counter(s.scalars(select(S.Comparison.task_id)))
        done = s.scalar(select(func.count()).select_from(S.Task).where(S.Task.status == "done"))
    assert set(per_task.values()) == {OVERLAP} and len(per_task) == n_tasks == done == 12
    assert stored == per_task  # what the clients were told was stored is exactly what is stored
