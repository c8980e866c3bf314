"""Simulated labelers label stored samples through the same checked path as people."""

import json

from sqlalchemy import select

from tether.data import schema as S
from tether.feedback.collect import collect_pairs
from tether.feedback.simulate import SimulationConfig, simulate_feedback


def seed_samples(store, n_prompts=30, k=4):
    words = ["Paris is the capital of France.", "I think it might be Lyon, or maybe not, who knows",
             "Paris. Paris. Paris. Paris. Paris. Paris.", "The capital of France is Paris, a city on the Seine."]
    with store.session() as s:
        for i in range(n_prompts):
            p, _ = store.get_or_add_prompt(s, f"What is the capital of France? ({i})",
                                           [{"role": "user", "content": f"What is the capital of France? ({i})"}])
            s.add_all([S.Response(prompt_id=p.id, text=words[j % 4], policy="pi", finished=j != 1)
                       for j in range(k)])


def test_simulated_feedback_is_stored_with_tasks_and_labelers(tmp_path):
    from tether.data.store import Store

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    seed_samples(store)
    counts = simulate_feedback(store, SimulationConfig(items=200, overlap=3, seed=1))
    assert sum(v for k, v in counts.items() if k != "critique") == 600
    assert set(counts) >= {"comparison", "ranking", "rating"}
    c = store.counts()
    assert c["tasks"] == 200 and c["labelers"] == 20 and c["comparisons"] == counts["comparison"]
    with store.session() as s:
        roles = set(s.scalars(select(S.Labeler.role)))
        kinds = {lab.groups["sim_kind"] for lab in s.scalars(select(S.Labeler))}
        assert roles == {"simulated"} and kinds == {"careful", "noisy", "biased", "adversarial", "random"}
        assert s.scalar(select(S.Assignment).limit(1)).status == "done"
    pairs = collect_pairs(store)
    assert pairs.pairs and pairs.by_kind["comparison"] > 0


def test_refuses_without_samples(tmp_path):
    import pytest

    from tether.data.store import Store
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="run `tether sample` first"):
        simulate_feedback(Store(f"sqlite:///{tmp_path / 't.db'}"), SimulationConfig())


def test_rm_trains_from_simulated_feedback_via_cli(tmp_path, tiny_model_dir):
    """sample-like data -> `tether label --simulated` -> `tether rm`: a reward model folder and a run row."""
    from typer.testing import CliRunner

    from tether.cli import app
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", policy=str(tiny_model_dir))
    seed_samples(ws.store(), n_prompts=12)
    runner = CliRunner()
    r = runner.invoke(app, ["label", "--simulated", "--items", "60", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["rm", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "held-out accuracy" in r.output and "flagged labeler" in r.output
    assert (ws.root / "runs" / "rm-1" / "model" / "config.json").is_file()
    with ws.store().session() as s:
        run = s.scalar(select(S.Run).where(S.Run.stage == "rm"))
        assert run.status == "done" and "eval_accuracy" in run.metrics
    r = runner.invoke(app, ["score", "--out", str(tmp_path / "scores.jsonl"), "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "48 responses scored" in r.output and "pairwise accuracy" in r.output
    assert "labelers vs the gold scorer" in r.output and "labelled pairs" in r.output
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 48
    with ws.store().session() as s:  # the first 3 prompts become held out
        for p in s.scalars(select(S.Prompt).order_by(S.Prompt.id).limit(3)):
            p.split = "eval"
    r = runner.invoke(app, ["score", "--split", "eval", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "12 responses scored" in r.output and "same-prompt pairs of split 'eval'" in r.output
    r = runner.invoke(app, ["score", "--split", "nope", "-w", str(ws.root)])
    assert r.exit_code == 1 and "no sampled responses to score in split 'nope'" in r.output
    rows = [{"prompt": "What is the capital of France?", "response": "Paris.", "id": "a"},
            {"prompt": [{"role": "user", "content": "What is the capital of France?"}], "response": "Lyon, maybe",
             "finished": False}]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    model = ws.root / "runs" / "rm-1" / "model"
    r = runner.invoke(app, ["score", "--file", str(tmp_path / "answers.jsonl"), "--model", str(model),
                            "--out", str(tmp_path / "scored.jsonl"), "-w", str(tmp_path / "no-workspace")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "2 responses from" in text and "over 1 same-prompt pairs" in text and "labelers vs" not in text
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [x["response"] for x in scored] == ["Paris.", "Lyon, maybe"] and scored[0]["id"] == "a"
    assert scored[1]["finished"] is False and all(isinstance(x["reward"], float) for x in scored)
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "Q", "finished": 1}) + "\n")
    r = runner.invoke(app, ["score", "--file", str(tmp_path / "bad.jsonl"), "--model", str(model)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "bad.jsonl" in text and "line 2" in text and "'response'" in text


def test_gold_agreement_by_hand():
    """Prompt 1: rewards (3, 1, 2) vs gold (0.9, 0.1, 0.5) order all 3 pairs alike -> 3/3; prompt 2:
    rewards (0, 1) vs gold (0.8, 0.2) disagree -> 0/1; accuracy 3/4."""
    from tether.eval.scoring import gold_agreement

    rows = [dict(prompt_id=1, reward=3, gold=0.9), dict(prompt_id=1, reward=1, gold=0.1),
            dict(prompt_id=1, reward=2, gold=0.5), dict(prompt_id=2, reward=0, gold=0.8),
            dict(prompt_id=2, reward=1, gold=0.2)]
    g = gold_agreement(rows)
    assert (g["pairs"], g["accuracy"]) == (4, 0.75)


def test_labeler_gold_agreement_by_hand():
    """Gold: 1 -> 0.9, 2 -> 0.5, 3 -> 0.5, 4 -> 0.1. Pairs (chosen > rejected, weight): 1>4 (1.0) agrees,
    4>1 (0.3) disagrees, 2>4 (1.0) agrees, 2>3 (1.0) is a gold tie and skipped. Raw 2/3; weighted
    (1.0 + 1.0) / (1.0 + 0.3 + 1.0) = 2 / 2.3."""
    from tether.eval.scoring import labeler_gold_agreement
    from tether.feedback.aggregate import Pair

    gold = {1: 0.9, 2: 0.5, 3: 0.5, 4: 0.1}
    pairs = [Pair(7, 1, 4, 1.0), Pair(7, 4, 1, 0.3), Pair(7, 2, 4, 1.0), Pair(7, 2, 3, 1.0)]
    g = labeler_gold_agreement(pairs, gold)
    assert g["pairs"] == 3 and abs(g["accuracy"] - 2 / 3) < 1e-12 and abs(g["weighted"] - 2 / 2.3) < 1e-12
