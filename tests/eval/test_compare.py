"""Policy comparison: paired win rate by hand, KL zero against itself, and `tether eval` end to end."""

import json

import pytest

from tether.eval.compare import compare, win_rate


def test_win_rate_by_hand():
    # outcomes 1, 0.5, 0, 1 -> 2.5 / 4 = 0.625; sd of (1, .5, 0, 1) = sqrt(((.375)^2*2 + .125^2 + .625^2) / 3)
    w = win_rate([3, 2, 1, 5], [1, 2, 4, 0])
    assert w["win_rate"] == 0.625 and (w["wins"], w["ties"], w["losses"], w["n"]) == (2, 1, 1, 4)
    sd = ((0.375 ** 2 * 2 + 0.125 ** 2 + 0.625 ** 2) / 3) ** 0.5
    assert w["ci_low"] == pytest.approx(0.625 - 1.96 * sd / 2)
    assert w["ci_high"] == pytest.approx(min(1.0, 0.625 + 1.96 * sd / 2))
    with pytest.raises(ValueError):
        win_rate([1], [])


def test_a_policy_against_itself_ties_at_zero_kl(word_model_dir):
    prompts = ["say a color", "the sky is", "a dog is"]
    gold = lambda p, r, f: float(len(r.split()))  # noqa: E731
    rep = compare(str(word_model_dir), str(word_model_dir), prompts, samples=2, max_new_tokens=5, gold_fn=gold)
    assert rep["gold"]["win_rate"] == 0.5 and rep["gold"]["ties"] == 6  # same seeds, same answers
    assert rep["policy"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert len(rep["answers"]) == 6 and rep["answers"][0]["policy_text"] == rep["answers"][0]["reference_text"]


def test_reference_answers_are_sampled_once_with_a_cache(word_model_dir, monkeypatch):
    import tether.eval.compare as C

    calls = []
    real = C.sample_answers
    monkeypatch.setattr(C, "sample_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    prompts, cache = ["say a color", "the sky is"], {}
    first = compare(str(word_model_dir), str(word_model_dir), prompts, samples=2, max_new_tokens=5, reference_cache=cache)
    second = compare(str(word_model_dir), str(word_model_dir), prompts, samples=2, max_new_tokens=5,
                     reference_cache=cache)
    assert len(calls) == 3 and len(cache) == 1  # policy, reference, policy again
    assert [a["reference_text"] for a in first["answers"]] == [a["reference_text"] for a in second["answers"]]
    compare(str(word_model_dir), str(word_model_dir), prompts, samples=1, max_new_tokens=5, reference_cache=cache)
    assert len(calls) == 5 and len(cache) == 2  # other settings: sampled afresh


def test_cli_eval_reports_win_rate_and_kl(word_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tether.cli import app
    from tether.data.io import import_prompts
    from tether.recipes.ppo import PPOConfig, train
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", policy=str(word_model_dir))
    (tmp_path / "p.txt").write_text("say a color\nthe sea is\n")
    import_prompts(ws.store(), tmp_path / "p.txt", "eval")
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "-w", str(ws.root)])
    assert res.exit_code == 1 and "no trained policy" in res.output
    out = ws.root / "runs" / "ppo-1"
    train(PPOConfig(policy=str(word_model_dir), updates=2, batch_size=4, mini_batch_size=4, max_new_tokens=4,
                    lr=1e-2, out_dir=str(out), checkpoint_every=None), ["say a color", "a cat is"],
          reward_fn=lambda p, r, f: [float("blue" in x) for x in r], show_progress=False)
    res = runner.invoke(app, ["eval", "--max-new-tokens", "4", "-w", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert "gold win rate of the policy" in res.output and "KL to reference" in res.output
    report = json.loads((ws.root / "runs" / "eval-1" / "report.json").read_text())
    assert report["policy"]["policy"].endswith("ppo-1/model") and report["prompts"] == 2
    assert report["policy"]["kl"] > 0 and len(report["answers"]) == 4


def test_best_of_n_kl_by_hand_and_end_to_end(word_model_dir, tmp_path):
    import math

    from tether import reward
    from tether.recipes.bon import BoNConfig, bon_kl, run

    assert bon_kl(1) == 0.0
    assert bon_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.6363 nats
    rm, tok = reward.load_reward_model(str(word_model_dir))
    reward.save_reward_model(rm, tok, tmp_path / "rm")
    prompts = ["say a color", "the sky is", "a dog is"]
    rep = run(BoNConfig(policy=str(word_model_dir), reward_model=str(tmp_path / "rm"), n=4, max_new_tokens=5),
              prompts, gold_fn=lambda p, r, f: float(len(r)))
    assert rep["reward_best"] >= rep["reward_single"]  # the best of 4 by reward, the first of the same 4
    assert all(a["best_reward"] >= a["single_reward"] for a in rep["answers"])
    assert rep["gold"]["n"] == 3 and rep["kl_analytic"] == pytest.approx(bon_kl(4))
