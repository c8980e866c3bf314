"""`tether control` end to end (tiny: Pendulum, two PPO rollouts), its database records, resume,
and its errors."""

import json

import numpy as np
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from tether.commands.control import control
from tether.data import schema as S

# `control` as `tether control` registers it, on an app of its own (tether/cli.py adds it to the real one)
app = typer.Typer(pretty_exceptions_enable=False)
app.callback()(lambda: None)
app.command()(control)
runner = CliRunner()
TINY = ["--steps", 4200, "--labels", 20, "--fragment-length", 10, "--n-envs", 2, "--eval-episodes", 1]


def tether(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ws(tmp_path):
    from tether.workspace import init_workspace

    return init_workspace(tmp_path / "ws")


def test_cli_end_to_end_with_a_behaviour(ws, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where SB3 would leave its log folders
    (tmp_path / "tmp").mkdir()
    r = tether("control", *TINY, "--behaviour", "tether.control.behaviours:spin_clockwise", "-w", ws.root)
    assert r.exit_code == 0, r.output
    assert not list((tmp_path / "tmp").glob("SB3-*"))  # no empty SB3-<date> folder per learn() call
    assert list((ws.root / "runs" / "control-1" / "tb" / "agent").glob("events.out.tfevents.*"))  # SB3's PPO metrics
    assert "Pendulum-v1: 4096 env steps, 20 labels" in r.output and "spin_clockwise" in r.output
    out = ws.root / "runs" / "control-1"
    for name in ("agent.zip", "reward.pt", "clips.npz", "labels.jsonl", "metrics.jsonl", "result.json"):
        assert (out / name).is_file(), name
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 20 and {x["choice"] for x in labels} <= {"a", "b", "tie"}
    for x in labels:  # the synthetic labeler picked the clip with the higher (behaviour) return
        assert x["choice"] == ("a" if x["return_a"] > x["return_b"] else "b" if x["return_b"] > x["return_a"] else "tie")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2048, 4096] and "eval_true_return" in metrics[-1]
    store = ws.store()
    with store.session() as s:
        prompt = s.scalars(select(S.Prompt)).one()
        assert prompt.split == "control" and prompt.text == "control: Pendulum-v1 / spin_clockwise"
        comps = s.scalars(select(S.Comparison)).all()
        assert len(comps) == 20 and {c.choice for c in comps} <= {"a", "b", "tie"}
        clip = s.get(S.Response, comps[0].response_a_id)
        assert clip.sampling["kind"] == "control_clip" and clip.sampling["file"] == "runs/control-1/clips.npz"
        assert clip.source == "clip"
        assert s.get(S.Labeler, comps[0].labeler_id).role == "simulated"
        run = s.scalars(select(S.Run).where(S.Run.stage == "control")).one()
        assert run.status == "done"
    # clip feedback never reaches a language reward model, DPO, or the language sampler
    from tether.eval.scoring import stored_responses
    from tether.feedback.collect import collect_pairs

    assert collect_pairs(store).pairs == [] and stored_responses(store) == []
    with np.load(ws.root / clip.sampling["file"]) as z:  # the clip can be found (and redrawn) from the database
        assert z["states"][clip.sampling["clip"]].shape == (10, 2)
        assert z["x"].shape[1:] == (10, 4)


def test_bad_env_id_and_options_are_clear_errors(ws):
    r = tether("control", "--env", "NoSuchEnv-v0", "-w", ws.root)
    assert r.exit_code == 1 and "env_id 'NoSuchEnv-v0'" in r.output and "Traceback" not in r.output
    assert not list((ws.root / "runs").glob("control-*"))  # failed before making a run folder
    r = tether("control", "--selection", "uncertain", "-w", ws.root)
    assert r.exit_code == 1 and "--selection" in r.output
    r = tether("control", "--steps", 1000, "-w", ws.root)
    assert r.exit_code == 1 and "total_steps 1000 is too small" in r.output
    r = tether("control", "--behaviour", "nofile.py:f", "-w", ws.root)
    assert r.exit_code == 1 and "--behaviour: no such file" in r.output


def test_resume_after_a_kill_finishes_the_same_schedule(tmp_path):
    """Kill the run in iteration 2's evaluation (the behaviour raises), after its labels were written
    but before its checkpoint; resume: the labels (file and database) and steps add up to what an
    uninterrupted run spends, and the metrics have one record per iteration."""
    from tether.workspace import init_workspace
    from tether.control.behaviours import spin_clockwise
    from tether.control.recipe import ControlConfig, run

    calls = {"n": 0}

    def dies(obs, act, nxt):
        calls["n"] += 1
        if calls["n"] > 3 * 1024 + 50:  # iterations 0, 1, 2 (1024 vec steps each), then into the evaluation
            raise KeyboardInterrupt
        return spin_clockwise(obs, act, nxt)

    cfg = ControlConfig(total_steps=6200, label_budget=24, fragment_length=10, ppo={"n_envs": 2}, behaviour=dies,
                        eval_episodes=1, out_dir=str(tmp_path / "runs" / "control-1"))
    store = init_workspace(tmp_path).store()
    with pytest.raises(KeyboardInterrupt):
        run(cfg, store=store)
    assert len((tmp_path / "runs" / "control-1" / "labels.jsonl").read_text().splitlines()) > 12  # iteration 2's too
    state = json.loads((tmp_path / "runs" / "control-1" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 1
    cfg.behaviour = spin_clockwise
    res = run(cfg, store=store, resume=True)
    assert res.env_steps == 6144 and res.labels == 24
    metrics = [json.loads(x) for x in (tmp_path / "runs" / "control-1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2] and metrics[-1]["labels"] == 24
    assert len((tmp_path / "runs" / "control-1" / "labels.jsonl").read_text().splitlines()) == 24
    assert store.counts()["comparisons"] == 24
