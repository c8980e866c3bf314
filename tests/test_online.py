"""RLOO and GRPO on tiny models: each learns a programmatic reward at bounded KL, both KL placements
work (and the loss placement shapes the gradient), samples come in groups of k, gradient accumulation
does not change the update, resume after a crash ends like an uninterrupted run, the commands run end
to end, and bad settings are refused."""

import json
import textwrap

import pytest
import torch

from tether.errors import TetherError
from tether.recipes.online import ESTIMATORS, KL_PLACEMENT, OnlineConfig, train
from tether.rollout import group_logits, pack, response_logits

PROMPTS = ["say a color", "the sky is", "name a color please", "the sea is", "a cat is", "the tree is",
           "say the name", "a dog is"]


def says_blue(prompts, responses, finished):
    """1 for a response that says 'blue', else 0."""
    return [float("blue" in r.split()) for r in responses]


def word_count(prompts, responses, finished):
    """Words in the response: a reward that rarely ties, so every group has a spread."""
    return [float(len(r.split())) for r in responses]


def _cfg(model_dir, out, **kw):
    base = dict(policy=str(model_dir), updates=30, prompts_per_update=4, k=4, max_new_tokens=6, temperature=1.0,
                lr=5e-3, beta=0.02, no_eos_penalty=0.0, checkpoint_every=None, out_dir=str(out), threads=1)
    return OnlineConfig(**(base | kw))


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_learns_to_say_blue_at_bounded_kl(word_model_dir, tmp_path, estimator):
    out = tmp_path / estimator
    res = train(_cfg(word_model_dir, out, estimator=estimator), PROMPTS * 2, reward_fn=says_blue,
                eval_prompts=PROMPTS, gold_fn=lambda p, r, f: float("blue" in r.split()), show_progress=False)
    recs = [r for r in _records(out) if "reward" in r]
    assert len(recs) == 30 and res.updates == 30 and res.completed
    assert res.metrics["kl_in"] == KL_PLACEMENT[estimator]
    first = sum(r["reward"] for r in recs[:5]) / 5
    last = sum(r["reward"] for r in recs[-5:]) / 5
    assert first < 0.5, first  # a random 23-word policy rarely says blue in 6 words
    assert last > first + 0.4, (first, last)
    assert res.metrics["eval_gold"] > first + 0.25  # held-out prompts too
    kls = [r["kl"] for r in recs]
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-4) and max(kls) < 6.0, kls  # nats per sequence stay bounded
    for key in ("kl_k3", "kl_loss", "entropy", "clipfrac", "approx_kl", "policy_loss", "grad_norm", "length", "eos",
                "gold", "zero_std_groups", "advantage_abs", "samples_per_s"):
        assert key in recs[-1], key
    assert 0.0 <= recs[0]["zero_std_groups"] <= 1.0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(res.model_dir) is not None  # a plain HF causal LM
    assert (out / "tb").is_dir() and (out / "metrics.json").is_file() and not (out / "checkpoint").exists()


def test_parameters_change_loss_is_finite_and_samples_come_in_groups(word_model_dir, tmp_path):
    """TRL style: one update moves every weight by far more than weight decay would, with a finite loss."""
    from transformers import AutoModelForCausalLM

    seen = []

    def reward(prompts, responses, finished):
        seen.append(list(prompts))
        return word_count(prompts, responses, finished)

    before = AutoModelForCausalLM.from_pretrained(word_model_dir).state_dict()
    res = train(_cfg(word_model_dir, tmp_path / "g", estimator="grpo", updates=1, prompts_per_update=3, k=3, lr=1e-2),
                PROMPTS, reward_fn=reward, show_progress=False)
    rec = _records(tmp_path / "g")[0]
    assert all(rec[k] == rec[k] and abs(rec[k]) < 1e6 for k in ("policy_loss", "kl_loss", "grad_norm"))
    after = res.model.state_dict()
    for name, w in before.items():
        assert (after[name] - w).abs().max() > 1e-3, name  # Adam's first step is ~lr = 1e-2 per weight
    groups = [seen[0][i:i + 3] for i in range(0, 9, 3)]
    assert len(seen[0]) == 9 and all(g == [g[0]] * 3 for g in groups)  # k consecutive samples per prompt
    assert len({g[0] for g in groups}) == 3


@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_both_kl_placements_shape_the_update(word_model_dir, tmp_path, kl_in):
    """beta = 0 and beta > 0 give the same first update (the policy *is* the reference: k1 = 0, and k3's
    gradient (1 - pi_ref / pi) * grad log pi vanishes), then different weights once the policy has moved."""
    runs = {}
    for beta in (0.0, 1.0):
        runs[beta] = [train(_cfg(word_model_dir, tmp_path / f"{kl_in}-{beta}-{n}", estimator="rloo", kl_in=kl_in,
                                 beta=beta, updates=n, lr=1e-2), PROMPTS, reward_fn=word_count,
                            show_progress=False).model.state_dict() for n in (1, 2)]
    one0, one1 = runs[0.0][0], runs[1.0][0]
    assert all(torch.allclose(one0[k], one1[k], atol=1e-5) for k in one0)
    two0, two1 = runs[0.0][1], runs[1.0][1]
    assert max(float((two0[k] - two1[k]).abs().max()) for k in two0) > 1e-4
    rec = _records(tmp_path / f"{kl_in}-1.0-2")
    assert rec[1]["kl_loss"] > 0 and rec[1]["kl"] != pytest.approx(0.0, abs=1e-6)
    if kl_in == "reward":
        assert "non_score_reward" in rec[1] and rec[1]["non_score_reward"] != 0.0
    else:
        assert "non_score_reward" not in rec[1]


def test_group_logits_share_the_prompt_and_match_a_plain_forward(word_model_dir):
    """Two groups of k = 3 (prompts of different lengths, responses of different lengths): running each prompt
    once and sharing its keys/values gives the logits and the gradients of the packed forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(word_model_dir).eval()
    prompts = [[3, 4]] * 3 + [[5, 6, 7, 8]] * 3
    responses = [[9, 1], [10, 11, 12], [5], [13, 14, 15], [1], [16, 17]]
    ids, attn, mask = pack(prompts, responses, pad=0)
    results = []
    for fn in (lambda: response_logits(model, ids, attn, 4)[0], lambda: group_logits(model, ids, attn, 4, 3)):
        model.zero_grad()
        logits = fn()  # (6, 3, V)
        logits[mask].logsumexp(-1).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    assert all(torch.allclose(ga[n], gb[n], atol=1e-5) for n in ga)


def test_micro_batches_do_not_change_the_update(word_model_dir, tmp_path):
    """Invariant: one optimizer step over 16 samples as 1 x 16 or 4 x 4 accumulated (token mean over the step)."""
    a, b = (train(_cfg(word_model_dir, tmp_path / str(mb), estimator="grpo", updates=2, micro_batch_size=mb,
                       lr=1e-2, beta=0.5), PROMPTS, reward_fn=word_count, show_progress=False).model.state_dict()
            for mb in (16, 4))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_several_epochs_and_minibatches_clip(word_model_dir, tmp_path, estimator):
    """Two passes in minibatches of 8: a no-grad policy pass gives the old log-probs, and the ratio moves."""
    res = train(_cfg(word_model_dir, tmp_path / "e", estimator=estimator, updates=2, ppo_epochs=2, mini_batch_size=8,
                     lr=1e-2), PROMPTS, reward_fn=word_count, show_progress=False)
    rec = _records(tmp_path / "e")
    assert res.completed and rec[-1]["approx_kl"] > 0 and rec[-1]["ratio"] != pytest.approx(1.0, abs=1e-7)


def test_bfloat16_autocast_recomputes_the_old_logprobs(word_model_dir, tmp_path):
    """Under autocast the decode's float32 log-probs are not what training sees; with two optimizer steps a
    batch, a no-grad policy pass gives them (a small lr keeps the second step's ratio near 1 too)."""
    res = train(_cfg(word_model_dir, tmp_path / "bf", estimator="rloo", updates=2, dtype="bfloat16",
                     mini_batch_size=8, lr=1e-4), PROMPTS, reward_fn=word_count, show_progress=False)
    rec = _records(tmp_path / "bf")
    assert res.completed and all(abs(r["ratio"] - 1.0) < 0.05 and r["policy_loss"] == r["policy_loss"] for r in rec)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_bfloat16_one_step_takes_the_old_logprobs_from_the_training_forward(word_model_dir, tmp_path, monkeypatch,
                                                                            estimator):
    """One optimizer step per batch under bf16: no no-grad policy pass; the old log-probs are the training
    forward's own (ratio exactly 1) and the KL metric is still filled. RLOO's KL-shaped reward, which needs
    those log-probs, is then shaped per micro-batch of whole groups: its KL term is -beta x the sampled k1
    (temperature 1: the training and the raw log-probs are the same), and 4 micro-batches of one group each
    give the advantages of 1 micro-batch of 4 groups."""
    from tether.recipes import online

    calls = []
    forward = online.ResponseLogits.forward

    def counting(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(online.ResponseLogits, "forward", counting)
    runs = {mb: train(_cfg(word_model_dir, tmp_path / f"{estimator}{mb}", estimator=estimator, updates=2,
                           dtype="bfloat16", micro_batch_size=mb, beta=0.5), PROMPTS, reward_fn=word_count,
                      show_progress=False) for mb in (16, 4)}
    rec = _records(tmp_path / f"{estimator}16")
    assert all(r.completed for r in runs.values())
    assert calls == [True] * 2 + [True] * 8  # one training forward per micro-batch, nothing else
    assert all(r["ratio"] == 1.0 and r["clipfrac"] == 0.0 for r in rec)
    assert rec[0]["kl"] == pytest.approx(0.0, abs=0.05) and rec[1]["kl"] != 0.0  # raw log-probs were filled in
    if estimator == "rloo":
        assert all(r["non_score_reward"] == pytest.approx(-0.5 * r["kl"], rel=1e-4, abs=1e-6) for r in rec)
        assert rec[1]["non_score_reward"] != 0.0
    first = _records(tmp_path / f"{estimator}4")[0]  # same weights, same samples: the same shaped rewards
    for key in ("advantage_abs", "kl") + (("non_score_reward",) if estimator == "rloo" else ()):
        assert first[key] == pytest.approx(rec[0][key], rel=2e-2, abs=1e-4), key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_runs_in_the_training_precision(word_model_dir, tmp_path, decode_precision, dtype):
    """Under bf16 autocast the rollout decodes in bf16 too (the fast path where bf16 matmuls are); fp32 stays fp32."""
    res = train(_cfg(word_model_dir, tmp_path / dtype, updates=1, dtype=dtype), PROMPTS, reward_fn=word_count,
                show_progress=False)
    assert res.completed and decode_precision == [dtype == "bfloat16"]


def test_lora_reference_is_the_base_with_adapters_off(word_model_dir, tmp_path):
    from tether.models import LoraSettings

    res = train(_cfg(word_model_dir, tmp_path / "lora", estimator="grpo", updates=2, lr=1e-2,
                     lora=LoraSettings(r=4, alpha=8)), PROMPTS, reward_fn=word_count, show_progress=False)
    rec = _records(tmp_path / "lora")
    assert res.completed and rec[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start at zero
    assert rec[-1]["kl"] != pytest.approx(0.0, abs=1e-7)  # and move the policy away from the base


def test_reward_from_a_tether_reward_model(word_model_dir, tmp_path):
    """The reward can be a reward-model folder (here a 2-head ensemble with a random head): its mean is trained on."""
    from tether import reward

    rm, tok = reward.load_reward_model(str(word_model_dir), num_heads=2)
    rm_dir = reward.save_reward_model(rm, tok, tmp_path / "rm")
    res = train(_cfg(word_model_dir, tmp_path / "r", estimator="rloo", updates=2, reward_model=str(rm_dir)), PROMPTS,
                show_progress=False)
    rec = _records(tmp_path / "r")
    assert res.completed and all(r["reward"] == r["reward"] and r["reward"] != 0.0 for r in rec)


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_resume_after_a_crash_ends_like_an_uninterrupted_run(word_model_dir, tmp_path, estimator):
    kw = dict(estimator=estimator, updates=6, checkpoint_every=2, prompts_per_update=2)
    full = train(_cfg(word_model_dir, tmp_path / "full", **kw), PROMPTS, reward_fn=says_blue, show_progress=False)
    crashed = train(_cfg(word_model_dir, tmp_path / "cut", stop_after=3, **kw), PROMPTS, reward_fn=says_blue,
                    show_progress=False)
    assert not crashed.completed and crashed.updates == 3 and crashed.model_dir is None
    assert (tmp_path / "cut" / "checkpoint" / "tether_state.json").is_file()
    resumed = train(_cfg(word_model_dir, tmp_path / "cut", **kw), PROMPTS, reward_fn=says_blue, resume=True,
                    show_progress=False)
    assert resumed.completed and resumed.updates == full.updates == 6
    assert [r["step"] for r in _records(tmp_path / "cut")] == [1, 2, 3, 4, 5, 6]  # update 3 redone, not duplicated
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # same samples, same updates, same weights
    train(_cfg(word_model_dir, tmp_path / "cut2", stop_after=2, **kw), PROMPTS, reward_fn=says_blue,
          show_progress=False)
    with pytest.raises(TetherError, match="other prompts or settings"):  # a checkpoint of other settings
        train(_cfg(word_model_dir, tmp_path / "cut2", **(kw | {"k": 2})), PROMPTS, reward_fn=says_blue, resume=True,
              show_progress=False)


def test_bad_settings_are_refused(word_model_dir, tmp_path):
    cases = [(dict(k=1), "at least 2"), (dict(estimator="ppo"), "unknown estimator 'ppo'.*rloo, grpo"),
             (dict(kl_in="middle"), "kl_in must be 'reward' or 'loss'"), (dict(mini_batch_size=5), "must divide"),
             (dict(temperature=0.0), "temperature must be > 0"), (dict(beta=-1.0), "beta must be >= 0")]
    for kw, message in cases:
        with pytest.raises(TetherError, match=message):
            train(_cfg(word_model_dir, tmp_path / "x", **kw), PROMPTS, reward_fn=says_blue)
    with pytest.raises(TetherError, match="exactly one reward"):
        train(_cfg(word_model_dir, tmp_path / "x"), PROMPTS)
    with pytest.raises(TetherError, match="finite numbers"):
        train(_cfg(word_model_dir, tmp_path / "x", updates=1), PROMPTS, reward_fn=lambda p, r, f: [1.0],
              show_progress=False)
    assert set(ESTIMATORS) == {"rloo", "grpo"}


def test_cli_rloo_and_grpo_end_to_end(word_model_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tether.commands.online import grpo, rloo
    from tether.data.io import import_prompts
    from tether.workspace import init_workspace

    app = typer.Typer()
    app.command()(rloo)
    app.command()(grpo)
    ws = init_workspace(tmp_path / "ws", policy=str(word_model_dir))
    ws.config.threads = 1
    ws.save()
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    import_prompts(ws.store(), tmp_path / "prompts.txt", "train")
    (tmp_path / "held_out.txt").write_text("a sea is\nname the sky\n")
    import_prompts(ws.store(), tmp_path / "held_out.txt", "eval")
    (tmp_path / "blue.py").write_text(textwrap.dedent("""
        def reward(prompts, responses, finished):
            return [float("blue" in r.split()) for r in responses]
    """))
    common = ["--reward-fn", f"{tmp_path / 'blue.py'}:reward", "--updates", "3", "--prompts-per-update", "2",
              "--k", "3", "--max-new-tokens", "4", "--lr", "1e-3", "--checkpoint-every", "1", "-w", str(ws.root)]
    runner = CliRunner()
    for name in ("rloo", "grpo"):
        res = runner.invoke(app, [name] + common)
        assert res.exit_code == 0, res.output
        assert f"3 {name} updates" in res.output and f"{name}-1/model" in res.output and "held-out" in res.output
        assert f"KL in the {KL_PLACEMENT[name]}" in res.output
        run = ws.root / "runs" / f"{name}-1"
        assert (run / "model" / "config.json").is_file() and not (run / "checkpoint").exists()
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 3]  # three updates, then the held-out evaluation
    res = runner.invoke(app, ["grpo", "--kl-in", "reward"] + common)
    assert res.exit_code == 0 and "KL in the reward" in res.output and (ws.root / "runs" / "grpo-2" / "model").is_dir()

    for args, message in [(["--k", "1"], "at least 2"), (["--kl-in", "middle"], "kl_in must be"),
                          (["--reward-fn", "nowhere.py:f"], "no such file nowhere.py")]:
        res = runner.invoke(app, ["rloo"] + common + args)
        assert res.exit_code == 1 and message in res.output, res.output
    assert not (ws.root / "runs" / "rloo-2").exists()  # refused before a run folder was made
    res = runner.invoke(app, ["grpo", "-w", str(ws.root)])
    assert res.exit_code == 1 and "no reward model in this workspace" in res.output
