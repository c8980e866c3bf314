"""`tether control --labeler web` end to end: the run stores each iteration's clip pairs as pairwise
tasks, waits, and trains on exactly the answers people gave through the web app (here its JSON API,
answered by this test while the run waits in a thread); a run that times out resumes and waits again."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from tether.commands.control import control
from tether.data import schema as S

app = typer.Typer(pretty_exceptions_enable=False)
app.callback()(lambda: None)
app.command()(control)
PASSWORD = "correct horse battery"
# 2048 steps of clip collection + one PPO rollout: iterations 0 and 1, 6 pairs asked (1, then 5)
TINY = ["--steps", 4200, "--labels", 6, "--fragment-length", 10, "--n-envs", 2, "--eval-episodes", 1,
        "--behaviour", "tether.control.behaviours:spin_clockwise", "--labeler", "web", "--poll-seconds", 0.1]


@pytest.fixture
def ws(tmp_path):
    from tether.web.accounts import add_labeler
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    store = ws.store()
    with store.session() as s:
        for name in ("alice", "bob"):
            add_labeler(s, name, "labeler", PASSWORD)
    store.close()
    return ws


def tether(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def in_thread(*args) -> tuple[threading.Thread, dict]:
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("result", tether(*args)), daemon=True)
    t.start()
    return t, box


def web_clients(root, names):
    from fastapi.testclient import TestClient

    from tether.web import create_app

    web = create_app(root)
    out = {}
    for name in names:
        c = TestClient(web, follow_redirects=False)
        r = c.post("/api/login", json={"name": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        out[name] = (c, r.json()["csrf_token"])
    return out


def answer_while_running(thread, clients, choose, deadline_s=90.0) -> dict[tuple[int, str], str]:
    """Answer every task the web app hands each labeler until the run's thread ends; returns
    {(task id, labeler): choice}. Fetches both GIFs of every task first, as a browser would."""
    given = {}
    end = time.monotonic() + deadline_s
    while thread.is_alive():
        assert time.monotonic() < end, "the run did not finish"
        idle = True
        for name, (c, csrf) in clients.items():
            task = c.get("/api/tasks/next").json()["task"]
            if task is None:
                continue
            idle = False
            assert [r["label"] for r in task["responses"]] == ["Left", "Right"] and task["clips"]
            for r in task["responses"]:
                gif = c.get(r["video"])
                assert gif.status_code == 200 and gif.content[:6] == b"GIF89a", gif.text
            choice = choose(len(given), name)
            r = c.post(f"/api/tasks/{task['id']}/label", json={"choice": choice}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            given[(task["id"], name)] = choice
        if idle:
            time.sleep(0.05)
    thread.join()
    return given


def test_control_run_trains_on_the_answers_given_in_the_web_app(ws):
    from tether.control.reward import RewardEnsemble

    clients = web_clients(ws.root, ["alice", "bob"])  # first: alembic's upgrade check is not thread-safe
    thread, box = in_thread("control", *TINY, "--overlap", 2, "-w", ws.root)
    script = ["a", "b", "tie", "cant_tell", "b", "a"]
    given = answer_while_running(thread, clients, lambda n, name: script[n % len(script)])
    r = box["result"]
    assert r.exit_code == 0, r.output
    assert "waiting for labelers (iteration 0): 1/1 clip pairs answered" in r.output  # the progress line, last
    assert "waiting for labelers (iteration 1): 5/5 clip pairs answered" in r.output
    assert len(given) == 12 and Counter(name for _, name in given) == {"alice": 6, "bob": 6}  # overlap 2
    n_cant = sum(c == "cant_tell" for c in given.values())
    assert 0 < n_cant < 12
    assert f"{12 - n_cant} labels" in r.output

    out = ws.root / "runs" / "control-1"
    lines = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert {(x["task_id"], x["labeler"]): x["choice"] for x in lines} == given and len(lines) == 12
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["web_answers"] for m in metrics] == [2, 10]
    assert sum(m["cant_tell"] for m in metrics) == n_cant and metrics[-1]["labels"] == 12 - n_cant
    assert sum(m["new_labels"] for m in metrics) == 12 - n_cant
    assert json.loads((out / "result.json").read_text())["labels"] == 12 - n_cant
    pairs = np.load(out / "checkpoint" / "pairs.npz")
    trained = [x for x in lines if x["choice"] != "cant_tell"]  # what the ensemble trained on, in order
    assert pairs["a"].tolist() == [x["clip_a"] for x in trained]
    assert pairs["b"].tolist() == [x["clip_b"] for x in trained]
    assert pairs["mu"].tolist() == [{"a": 1.0, "b": 0.0, "tie": 0.5}[x["choice"]] for x in trained]

    store = ws.store()
    with store.session() as s:
        comps = s.scalars(select(S.Comparison)).all()
        assert {(c.task_id, s.get(S.Labeler, c.labeler_id).name): c.choice for c in comps} == given
        tasks = s.scalars(select(S.Task)).all()
        assert len(tasks) == 6 and {(t.kind, t.labels_needed, t.status) for t in tasks} == {("pairwise", 2, "done")}
        for x in lines:  # the labels file names the clips the tasks showed, Left = a
            t = s.get(S.Task, x["task_id"])
            left, right = (s.get(S.Response, i) for i in t.response_ids)
            assert (left.sampling["clip"], right.sampling["clip"]) == (x["clip_a"], x["clip_b"])
            assert left.source == "clip" and left.sampling["file"] == "runs/control-1/clips.npz"
        assert not s.scalars(select(S.Labeler).where(S.Labeler.role == "simulated")).all()  # no synthetic labels
        shown = {i for t in tasks for i in t.response_ids}  # a clip may be in two pairs
        assert s.scalars(select(S.Run).where(S.Run.stage == "control")).one().status == "done"
    assert len(list((out / "gifs").glob("clip-*.gif"))) == len(shown)  # each clip drawn once, for 2 labelers

    # the reward model moved from its initialisation
    fresh = RewardEnsemble(4, 3, 64, seed=0).state_dict()
    trained_sd = torch.load(out / "reward.pt")
    assert any(not torch.equal(fresh[k], trained_sd[k]) for k in fresh if k.startswith(("weights", "biases")))


def test_timeout_then_resume_waits_for_the_same_tasks(ws):
    r = tether("control", *TINY, "--web-timeout-minutes", 0.003, "-w", ws.root)
    assert r.exit_code == 1 and "1 of 1 clip pairs still unanswered" in r.output and "--resume" in r.output
    assert "Traceback" not in r.output
    r = tether("control", *[x for x in TINY if x not in ("--labeler", "web")], "--resume", "-w", ws.root)
    assert r.exit_code == 1 and "waiting for web labels (iteration 0)" in r.output and "--labeler web" in r.output
    clients = web_clients(ws.root, ["alice"])
    c, csrf = clients["alice"]
    task = c.get("/api/tasks/next").json()["task"]
    r = c.post(f"/api/tasks/{task['id']}/label", json={"choice": "b"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text

    thread, box = in_thread("control", *TINY, "--resume", "-w", ws.root)
    given = answer_while_running(thread, clients, lambda n, name: "a")
    r = box["result"]
    assert r.exit_code == 0, r.output
    assert "iteration 0: waiting again for the labels of 1 clip pairs" in r.output
    assert len(given) == 5 and "6 labels" in r.output
    out = ws.root / "runs" / "control-1"
    lines = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert [(x["iteration"], x["task_id"], x["choice"]) for x in lines] == \
        [(0, task["id"], "b")] + [(1, t, "a") for t, _ in sorted(given)]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1] and metrics[-1]["labels"] == 6
    store = ws.store()
    with store.session() as s:
        tasks = s.scalars(select(S.Task)).all()
        assert len(tasks) == 6 and task["id"] in {t.id for t in tasks}  # the first task was kept, not made again
        clips = s.scalars(select(S.Response).where(S.Response.source == "clip")).all()  # each stored once
        assert len(clips) == len({r.sampling["clip"] for r in clips}) == len({i for t in tasks for i in t.response_ids})
        assert [r.status for r in s.scalars(select(S.Run).order_by(S.Run.id))] == ["failed", "failed", "done"]


def test_web_labeler_options_are_clear_errors(ws):
    r = tether("control", "--labeler", "humans", "-w", ws.root)
    assert r.exit_code == 1 and "--labeler must be 'synthetic' or 'web', not 'humans'" in r.output
    r = tether("control", "--labeler", "web", "--no-store", "-w", ws.root)
    assert r.exit_code == 1 and "--labeler web needs the workspace database" in r.output
    r = tether("control", "--labeler", "web", "--overlap", 0, "-w", ws.root)
    assert r.exit_code == 1 and "--overlap must be >= 1, not 0" in r.output
    r = tether("control", "--labeler", "web", "--poll-seconds", 0, "-w", ws.root)
    assert r.exit_code == 1 and "--poll-seconds must be > 0" in r.output
    assert not list((ws.root / "runs").glob("control-*"))  # nothing started


def test_recipe_refuses_web_labels_without_a_store(tmp_path):
    from tether.control.recipe import ControlConfig, run
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="labeler 'web' needs the workspace database"):
        run(ControlConfig(labeler="web", out_dir=str(tmp_path / "runs" / "control-1")))
    with pytest.raises(TetherError, match="labeler: expected one of synthetic, web, got 'oracle'"):
        run(ControlConfig(labeler="oracle", out_dir=str(tmp_path / "runs" / "control-1")))
