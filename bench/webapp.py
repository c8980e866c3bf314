"""Load test of the labeling web app: N concurrent labelers, each submitting M answers, from this
process against `uvicorn` serving the app in a second process on loopback.

For each backend (SQLite, and PostgreSQL when a server answers) it makes a fresh workspace with
enough pairwise tasks (overlap 2), starts the server, logs the labelers in, and has each one loop
"answer my task, get the next" (`POST /api/tasks/{id}/label?next=true`, one round trip per item)
over its own keep-alive connection. Then it checks the database: every answer the server
acknowledged (201) is stored, none twice, no task over its overlap. Printed: submissions/s and
p50/p99 latency of the submissions. Goal on SQLite: >= 500/s and p99 < 50 ms.

    python bench/webapp.py                        # 50 labelers x 200 answers, SQLite then PostgreSQL
    python bench/webapp.py --labelers 10 --submissions 20 --backends sqlite   # a quick run

The client is a minimal asyncio HTTP/1.1 client (no dependency, little CPU), so that on a small
machine the measurement is of the server rather than of the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PASSWORD = "bench password"
PG_ADMIN = os.environ.get("TETHER_TEST_PG_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres")


# --- setup ---------------------------------------------------------------------------------------
def make_workspace(root: Path, database: str | None, labelers: int, tasks: int, overlap: int):
    """A workspace with `tasks` pairwise tasks (one per prompt, 2 responses each) and the labelers."""
    from sqlalchemy import insert

    from tether.data import schema as S
    from tether.data.store import prompt_hash
    from tether.web.security import hash_password
    from tether.workspace import init_workspace

    ws = init_workspace(root, database=database)
    store = ws.store()
    hashed = hash_password(PASSWORD)
    with store.session() as s:
        s.execute(insert(S.Prompt), [{"id": i + 1, "text": f"bench prompt {i}", "content_hash": prompt_hash(
            f"bench prompt {i}", None), "split": "train", "meta": {}} for i in range(tasks)])
        s.execute(insert(S.Response), [{"id": 2 * i + j + 1, "prompt_id": i + 1, "text": f"answer {j} to {i}",
                                        "policy": f"policy-{j}", "round": 0, "source": "sample", "sampling": {}}
                                       for i in range(tasks) for j in range(2)])
        s.execute(insert(S.Task), [{"kind": "pairwise", "prompt_id": i + 1, "response_ids": [2 * i + 1, 2 * i + 2],
                                    "labels_needed": overlap, "options": {}, "status": "open"} for i in range(tasks)])
        s.execute(insert(S.Labeler), [{"name": f"bench{i}", "role": "labeler", "password_hash": hashed,
                                       "groups": {}} for i in range(labelers)])
    if store.engine.dialect.name == "postgresql":  # explicit ids above: move the sequences on
        with store.engine.begin() as conn:
            for table in ("prompts", "responses"):
                conn.exec_driver_sql(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
    store.close()
    return ws


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ws_root: Path, port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "TETHER_WORKSPACE": str(ws_root)}
    cmd = [sys.executable, "-m", "uvicorn", "tether.web.app:create_app_from_env", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start within 60 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its direct children (uvicorn's workers), from /proc;
    NaN where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def own(p: int) -> tuple[int, float]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick  # ppid, utime + stime

    try:
        total = own(pid)[1]
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != pid:
                try:
                    ppid, cpu = own(int(d.name))
                except (OSError, ValueError, IndexError):
                    continue
                total += cpu if ppid == pid else 0.0
        return total
    except OSError:
        return float("nan")


# --- a small HTTP/1.1 keep-alive client ------------------------------------------------------------
class Conn:
    def __init__(self, port: int):
        self.port, self.cookie, self.csrf = port, None, None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        if self.cookie:
            head.append(f"Cookie: {self.cookie}")
        if self.csrf:
            head.append(f"X-CSRF-Token: {self.csrf}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = (await self.reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                self.cookie = value.strip().split(";", 1)[0]
        payload = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(payload) if payload else {})

    def close(self) -> None:
        self.writer.close()


async def login(port: int, name: str) -> Conn:
    conn = Conn(port)
    await conn.open()
    status, body = await conn.request("POST", "/api/login", {"name": name, "password": PASSWORD})
    if status != 200:
        raise RuntimeError(f"login {status}: {body}")
    conn.csrf = body["csrf_token"]
    return conn


async def labeler(conn: Conn, name: str, submissions: int, latencies: list[float], acked: list,
                  errors: list) -> None:
    try:
        status, body = await conn.request("GET", "/api/tasks/next")
        task = body.get("task")
        rng = random.Random(name)
        for _ in range(submissions):
            if task is None:
                raise RuntimeError("the queue ran dry")
            t0 = time.perf_counter()
            status, body = await conn.request("POST", f"/api/tasks/{task['id']}/label?next=true",
                                              {"choice": rng.choice("ab"), "duration_ms": 1000})
            latencies.append(time.perf_counter() - t0)
            if status != 201:
                raise RuntimeError(f"answer {status}: {body}")
            acked.append((name, task["id"], body["feedback_id"]))
            task = body["next"]
    except Exception as e:  # noqa: BLE001 (counted and printed)
        errors.append(f"{name}: {e}")
    finally:
        conn.close()


async def load(port: int, server_pid: int, labelers: int, submissions: int):
    """Log everyone in (scrypt is slow on purpose: not part of the measurement), then label."""
    names = [f"bench{i}" for i in range(labelers)]
    conns = await asyncio.gather(*(login(port, n) for n in names))
    latencies: list[float] = []
    acked: list = []
    errors: list = []
    cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
    await asyncio.gather(*(labeler(c, n, submissions, latencies, acked, errors) for c, n in zip(conns, names)))
    return time.perf_counter() - t0, cpu_seconds(server_pid) - cpu0, latencies, acked, errors


# --- checking and reporting ------------------------------------------------------------------------
def check(ws, acked: list) -> tuple[int, int, int]:
    """(lost, duplicated, over-assigned tasks) against the database."""
    from sqlalchemy import func, select

    from tether.data import schema as S

    store = ws.store()
    with store.session() as s:
        rows = s.execute(select(S.Comparison.id, S.Comparison.task_id, S.Labeler.name)
                         .join(S.Labeler, S.Labeler.id == S.Comparison.labeler_id)).all()
        over = s.scalar(select(func.count()).select_from(
            select(S.Comparison.task_id).group_by(S.Comparison.task_id)
            .having(func.count() > 2).subquery()))
    store.close()
    stored = {(name, task, fid) for fid, task, name in rows}
    lost = len({tuple(a) for a in acked} - stored)
    pairs = [(name, task) for _, task, name in rows]
    duplicated = len(pairs) - len(set(pairs)) + (len(rows) - len(acked) if len(rows) > len(acked) else 0)
    return lost, duplicated, over or 0


def pg_database() -> str | None:
    """A fresh PostgreSQL database URL, or None when no server answers."""
    try:
        import psycopg

        admin = PG_ADMIN.replace("postgresql+psycopg://", "postgresql://")
        name = f"tether_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    except Exception as e:  # noqa: BLE001
        print(f"postgresql: skipped ({str(e).strip().splitlines()[0]})")
        return None


def drop_pg(url: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def run(backend: str, args) -> dict | None:
    total = args.labelers * args.submissions
    tasks = (total + 1) // 2 + args.labelers * 2  # overlap 2, with a little to spare
    url = None
    if backend == "postgresql":
        url = pg_database()
        if url is None:
            return None
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws", url, args.labelers, tasks, overlap=2)
        port = free_port()
        workers = args.workers if backend == "postgresql" else args.sqlite_workers
        server = start_server(ws.root, port, workers)
        try:
            wall, cpu, lat, acked, errors = asyncio.run(load(port, server.pid, args.labelers, args.submissions))
        finally:
            server.terminate()
            server.wait(timeout=30)
        lost, duplicated, over = check(ws, acked)
    if url:
        drop_pg(url)
    lat_ms = sorted(x * 1000 for x in lat)
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))] if lat_ms else float("nan")
    return {"backend": backend, "workers": workers, "submissions": len(acked), "expected": total,
            "errors": errors, "wall_s": wall, "per_s": len(acked) / wall if wall else 0.0,
            "p50_ms": statistics.median(lat_ms) if lat_ms else float("nan"), "p99_ms": p99,
            "lost": lost, "duplicated": duplicated, "over_assigned": over,
            "server_cpu_ms": 1000 * cpu / len(acked) if acked else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--submissions", type=int, default=200, help="answers per labeler")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers on PostgreSQL")
    ap.add_argument("--sqlite-workers", type=int, default=1, help="uvicorn workers on SQLite")
    args = ap.parse_args()
    ok = True
    print(f"{args.labelers} labelers x {args.submissions} answers each, one process; server: uvicorn on loopback")
    for backend in args.backends.split(","):
        res = run(backend.strip(), args)
        if res is None:
            continue
        print(f"{res['backend']:>10} ({res['workers']} worker{'s' if res['workers'] > 1 else ''}): "
              f"{res['submissions']}/{res['expected']} answers in {res['wall_s']:.1f} s = {res['per_s']:.0f}/s; "
              f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; lost {res['lost']}, "
              f"duplicated {res['duplicated']}, tasks over their overlap {res['over_assigned']}")
        print(f"    server CPU per answer {res['server_cpu_ms']:.2f} ms (all workers), i.e. about "
              f"{1000 / res['server_cpu_ms']:.0f} answers/s per free core; load average now "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for e in res["errors"][:5]:
            print(f"    error: {e}")
        ok &= not res["errors"] and res["lost"] == 0 and res["duplicated"] == 0 and res["over_assigned"] == 0
        if res["backend"] == "sqlite":
            goal = res["per_s"] >= 500 and res["p99_ms"] < 50
            print(f"    SQLite goal (>= 500/s, p99 < 50 ms): {'met' if goal else 'NOT met'} (each labeler sends its next "
                  f"answer when the last returns, so by Little's law the mean latency is {args.labelers} / throughput: "
                  f"p99 < 50 ms needs more than {args.labelers / 0.05:.0f}/s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
