"""`tether loop` / `tether demo` on a tiny random model: every round runs every step, rows and runs carry
their round, a killed loop resumes without redoing finished steps, bad settings are refused."""

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from tether.cli import app
from tether.data import schema as S
from tether.data.io import import_prompts
from tether.errors import TetherError
from tether.recipes import loop
from tether.workspace import open_workspace

runner = CliRunner()
TRAIN = ["How do I boil an egg?", "Name three colours.", "What is a noun?", "Give me a tip for sleeping well.",
         "Why is the sky blue?", "How do plants drink water?"]
EVAL = ["What is rain?", "How do I tie a shoe?"]


def _small(**kw) -> loop.LoopConfig:
    base = dict(rounds=2, k=2, prompts_per_round=3, max_new_tokens=8, rm_train_layers=1, rm_batch_size=4,
                updates=2, batch_size=4, mini_batch_size=2, eval_samples=1, overlap=2, labelers=6, adversarial=1,
                random_labelers=0)
    return loop.LoopConfig(**(base | kw))


@pytest.fixture
def ws(workspace, tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p, "split": "train"}) + "\n" for p in TRAIN)
                                      + "".join(json.dumps({"prompt": p, "split": "eval"}) + "\n" for p in EVAL))
    import_prompts(workspace.store(), tmp_path / "p.jsonl")
    workspace.config.threads = 1
    workspace.save()
    return workspace


def _count(ws, stmt):
    with ws.store().session() as s:
        return s.execute(stmt).scalar()


def test_two_rounds_of_ppo_tag_everything_with_their_round(ws):
    start = ws.config.policy
    res = loop.run(ws, _small(), say=lambda line: None)
    rounds = res.state["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["done"] == list(loop.STEPS) for r in rounds)
    assert rounds[0]["start_policy"] == start and rounds[1]["start_policy"] == rounds[0]["policy"]["model"]
    assert rounds[1]["policy"]["model"] != rounds[0]["policy"]["model"]
    # samples: 3 prompts x k=2 per round, each tagged with its round and the policy that made it
    for r in rounds:
        n = _count(ws, select(func.count()).select_from(S.Response).where(S.Response.round == r["round"],
                                                                          S.Response.policy == r["start_policy"]))
        assert n == 6, (r["round"], n)
        assert _count(ws, select(func.count()).select_from(S.Task).where(S.Task.round == r["round"])) > 0
    # every stage's run row carries its round
    with ws.store().session() as s:
        runs = s.execute(select(S.Run.stage, S.Run.round, S.Run.status)).all()
    for stage in ("sample", "rm", "ppo", "eval"):
        assert sorted(r for st, r, status in runs if st == stage and status == "done") == [0, 1], (stage, runs)
    # the second reward model was retrained from the starting model on round 0's and round 1's feedback
    second = json.loads((Path(rounds[1]["rm"]["model"]).parent / "metrics.json").read_text())
    assert second["config"]["model"] == start
    assert rounds[1]["rm"]["pairs"] > rounds[0]["rm"]["pairs"] > 0
    # evaluations: against the starting policy, on the held-out prompts, in report files
    for r in rounds:
        rep = json.loads(open(r["eval"]["report"]).read())
        assert rep["round"] == r["round"] and rep["reference"]["policy"] == start
        assert 0.0 <= r["eval"]["gold_win_rate"] <= 1.0 and r["eval"]["kl"] == r["eval"]["kl"]
    state = json.loads((res.out_dir / "state.json").read_text())
    assert state["rounds"][1]["eval"] == rounds[1]["eval"]
    ws2 = open_workspace(ws.root)
    assert ws2.config.policy == rounds[1]["policy"]["model"] and ws2.config.round == 2


def test_killed_loop_resumes_without_redoing_finished_steps(ws, monkeypatch):
    real = loop.STEP_FNS["policy"]
    calls = {"n": 0}

    def dies_in_round_1(ws_, cfg, state, rnd, again, say, save):
        if rnd["round"] == 1 and calls["n"] == 0:
            calls["n"] += 1
            rnd["policy_dir"] = str(ws_.new_run_dir("ppo"))
            save()
            raise KeyboardInterrupt  # as if killed during round 1's policy step
        return real(ws_, cfg, state, rnd, again, say, save)

    monkeypatch.setitem(loop.STEP_FNS, "policy", dies_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        loop.run(ws, _small(), say=lambda line: None)
    state = json.loads(sorted((ws.root / "runs").glob("loop-*"))[-1].joinpath("state.json").read_text())
    assert state["rounds"][0]["done"] == list(loop.STEPS)
    assert state["rounds"][1]["done"] == ["sample", "feedback", "rm"] and state["rounds"][1]["started"] == "policy"
    samples_before = _count(ws, select(func.count()).select_from(S.Response))
    rm_runs_before = _count(ws, select(func.count()).select_from(S.Run).where(S.Run.stage == "rm"))

    res = loop.run(open_workspace(ws.root), _small(), resume=True, say=lambda line: None)
    assert [r["done"] for r in res.state["rounds"]] == [list(loop.STEPS)] * 2
    assert res.out_dir.name == "loop-1"  # the same loop, continued
    assert _count(ws, select(func.count()).select_from(S.Response)) == samples_before  # nothing sampled again
    assert _count(ws, select(func.count()).select_from(S.Run).where(S.Run.stage == "rm")) == rm_runs_before
    # the interrupted policy step reused its run folder
    assert res.state["rounds"][1]["policy_dir"].endswith("ppo-2")

    with pytest.raises(TetherError, match="other settings.*updates"):
        loop.run(open_workspace(ws.root), _small(updates=3), resume=True, say=lambda line: None)


@pytest.mark.parametrize("algorithm", ["rloo", "dpo"])
def test_other_policy_stages(ws, algorithm):
    res = loop.run(ws, _small(rounds=1, algorithm=algorithm), say=lambda line: None)
    rnd = res.state["rounds"][0]
    assert rnd["done"] == list(loop.STEPS)
    assert f"/{algorithm}-1" in rnd["policy"]["run"] and "gold_win_rate" in rnd["eval"]


def test_rm_continue_trains_on_top_of_the_last_round_on_the_new_feedback(ws):
    """--rm-continue: round 1's reward model starts from round 0's and sees round 1's feedback only."""
    from tether.feedback.collect import collect_pairs

    res = loop.run(ws, _small(algorithm="dpo", rm_continue=True), say=lambda line: None)
    rounds = res.state["rounds"]
    second = json.loads((Path(rounds[1]["rm"]["model"]).parent / "metrics.json").read_text())["config"]
    assert second["model"] == rounds[0]["rm"]["model"]
    assert rounds[1]["rm"]["pairs"] == len(collect_pairs(ws.store(), [1]).pairs) > 0
    assert rounds[0]["rm"]["pairs"] == len(collect_pairs(ws.store(), [0]).pairs) > 0


def test_bad_settings_and_missing_prompts_are_refused(workspace):
    for kw, msg in ((dict(rounds=0), "rounds"), (dict(algorithm="a2c"), "algorithm"), (dict(k=1), "k must"),
                    (dict(feedback="crowd"), "feedback"), (dict(prompts_per_round=0), "prompts_per_round"),
                    (dict(algorithm="grpo", batch_size=2, k=4), "batch_size"),
                    (dict(batch_size=6, mini_batch_size=4), "multiple of mini_batch_size"),
                    (dict(feedback="web", web_kind="critique"), "web_kind")):
        with pytest.raises(TetherError, match=msg):
            loop.check(_small(**kw))
    with pytest.raises(TetherError, match="no prompts in split 'train'"):
        loop.run(workspace, _small(), say=lambda line: None)


def test_cli_loop_and_demo(ws, tiny_model_dir, tmp_path):
    r = runner.invoke(app, ["loop", "--rounds", "1", "--k", "2", "--prompts-per-round", "2", "--updates", "1",
                            "--batch-size", "2", "--max-new-tokens", "6", "--eval-samples", "1", "--rm-train-layers",
                            "1", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "gold win rate" in r.output and "loop-1/state.json" in r.output.replace("\n", "")
    r = runner.invoke(app, ["loop", "--algorithm", "sac", "-w", str(ws.root)])
    assert r.exit_code != 0 and "algorithm must be one of" in r.output

    demo_dir = tmp_path / "demo"
    args = ["demo", "--dir", str(demo_dir), "--model", str(tiny_model_dir), "--prompts", "3", "--rounds", "1",
            "--updates", "1", "--sft-epochs", "1", "--max-new-tokens", "6", "--eval-prompts", "3"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "demo finished in" in r.output and "report:" in r.output
    demo_ws = open_workspace(demo_dir)
    assert "/runs/sft-1/model" not in demo_ws.config.policy  # the loop's policy, trained from the SFT model
    state = json.loads((demo_dir / "runs" / "loop-1" / "state.json").read_text())
    assert state["sft"].endswith("runs/sft-1/model") and state["rounds"][0]["done"] == list(loop.STEPS)
    # run again: everything is done, nothing is repeated
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "already done" in r.output
    assert len(list((demo_dir / "runs").glob("sft-*"))) == 1


def test_mix_feedback_adds_the_ai_judge_on_the_simulated_pairwise_tasks(ws, tiny_model_dir):
    res = loop.run(ws, _small(rounds=1, feedback="mix", judge_model=str(tiny_model_dir), items=6),
                   say=lambda line: None)
    fb = res.state["rounds"][0]["feedback"]
    assert sum(fb["labels"].values()) > 0 and fb["judge"]["tasks"] > 0
    with ws.store().session() as s:
        pairwise = s.execute(select(func.count()).select_from(S.Task).where(S.Task.kind == "pairwise",
                                                                             S.Task.round == 0)).scalar()
        judged = s.execute(select(func.count()).select_from(S.Comparison).join(S.Labeler).where(
            S.Labeler.role == "ai_judge", S.Comparison.round == 0)).scalar()
    assert judged == pairwise == fb["judge"]["tasks"]


def test_web_feedback_waits_for_people_to_finish_the_round(ws):
    """The loop makes the round's ranking tasks and waits; two people rank through the web app's JSON
    API (longest answer first); then the round goes on and trains on their labels."""
    import threading
    import time

    from fastapi.testclient import TestClient

    from tether.web import WebSettings, create_app
    from tether.web.accounts import add_labeler

    with ws.store().session() as s:
        for name in ("ana", "ben"):
            add_labeler(s, name, password="a long enough password")
        s.commit()
    lines, result = [], {}
    cfg = _small(rounds=1, feedback="web", overlap=2, web_poll_seconds=0.05, web_timeout_hours=0.1)
    worker = threading.Thread(target=lambda: result.update(res=loop.run(ws, cfg, say=lines.append)), daemon=True)
    worker.start()
    deadline = time.time() + 120
    while not any("waiting for labelers" in x for x in lines):
        assert time.time() < deadline and worker.is_alive(), lines
        time.sleep(0.05)
    assert any("3 rank tasks for round 0" in x for x in lines), lines
    app = create_app(ws.root, store=ws.store(), settings=WebSettings(timeout_s=900))
    answered = 0
    for name in ("ana", "ben"):
        with TestClient(app) as c:
            csrf = c.post("/api/login", json={"name": name, "password": "a long enough password"}).json()["csrf_token"]
            task = c.get("/api/tasks/next").json()["task"]
            while task is not None:
                order = [r["id"] for r in sorted(task["responses"], key=lambda r: -len(r["text"]))]
                r = c.post(f"/api/tasks/{task['id']}/label?next=true", json={"order": order},
                           headers={"X-CSRF-Token": csrf})
                assert r.status_code == 201, r.text
                answered += 1
                task = r.json()["next"]
    worker.join(timeout=300)
    assert not worker.is_alive() and answered == 6
    rnd = result["res"].state["rounds"][0]
    assert rnd["feedback"]["web"] == {"tasks": 3} and rnd["done"] == list(loop.STEPS)
    assert rnd["rm"]["pairs"] == 6 * 1  # 6 rankings of k=2 answers, one pair each
    assert any("waiting for labelers: 3/3 tasks done" in x for x in lines)
