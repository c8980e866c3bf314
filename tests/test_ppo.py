"""PPO on tiny models: it learns a programmatic reward at bounded KL, resumes after a crash to the same
end, packs rollouts correctly, and refuses bad settings."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tether.errors import TetherError
from tether.recipes.common import prompt_order
from tether.recipes.ppo import PPOConfig, train
from tether.rollout import pack, response_logits

PROMPTS = ["say a color", "the sky is", "name a color please", "the sea is", "a cat is", "the tree is",
           "say the name", "a dog is"]


def says_blue(prompts, responses, finished):
    """1 for a response that says 'blue', else 0."""
    return [float("blue" in r.split()) for r in responses]


def _cfg(model_dir, out, **kw):
    base = dict(policy=str(model_dir), updates=30, batch_size=16, mini_batch_size=8, ppo_epochs=2,
                max_new_tokens=6, temperature=1.0, lr=3e-3, kl_coef=0.02, no_eos_penalty=0.0, vf_coef=0.5,
                checkpoint_every=None, out_dir=str(out), threads=1)
    return PPOConfig(**(base | kw))


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_learns_to_say_blue_at_bounded_kl(word_model_dir, tmp_path):
    res = train(_cfg(word_model_dir, tmp_path / "ppo"), PROMPTS * 2, reward_fn=says_blue, eval_prompts=PROMPTS,
                gold_fn=lambda p, r, f: float("blue" in r.split()), show_progress=False)
    recs = [r for r in _records(tmp_path / "ppo") if "reward" in r]
    assert len(recs) == 30 and res.updates == 30 and res.completed
    first = sum(r["reward"] for r in recs[:5]) / 5
    last = sum(r["reward"] for r in recs[-5:]) / 5
    assert first < 0.5, first  # a random 23-word policy rarely says blue in 6 words
    assert last > first + 0.35, (first, last)
    assert res.metrics["eval_gold"] > first + 0.25  # held-out prompts too
    kls = [r["kl"] for r in recs]
    assert all(k == k for k in kls) and max(kls) < 6.0, kls  # nats per sequence stay bounded
    assert all(abs(r["kl_coef"] - 0.02) < 1e-12 for r in recs)  # fixed controller
    for key in ("kl_k3", "entropy", "clipfrac", "vf_clipfrac", "value_loss", "policy_loss", "length", "eos",
                "gold", "approx_kl", "explained_variance"):
        assert key in recs[-1], key
    # the saved policy is a plain HF causal LM and says blue more than the start did
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(res.model_dir) is not None
    assert (tmp_path / "ppo" / "tb").is_dir() and (tmp_path / "ppo" / "metrics.json").is_file()


def test_adaptive_kl_controller_moves_beta(word_model_dir, tmp_path):
    res = train(_cfg(word_model_dir, tmp_path / "ppo", updates=4, kl_target=0.01, kl_horizon=64),
                PROMPTS, reward_fn=says_blue, show_progress=False)
    recs = _records(tmp_path / "ppo")
    coefs, kls = [r["kl_coef"] for r in recs], [r["kl"] for r in recs]
    assert coefs[0] == pytest.approx(0.02)
    for i in range(1, len(recs)):  # each update's KL (k1, nats) moves beta towards the target: up above it
        assert (coefs[i] > coefs[i - 1]) == (kls[i - 1] > 0.01), (kls, coefs)
    assert any(b > a for a, b in zip(coefs, coefs[1:])), (kls, coefs)  # this run went above the target
    assert res.completed


def test_resume_after_a_crash_ends_like_an_uninterrupted_run(word_model_dir, tmp_path):
    kw = dict(updates=6, checkpoint_every=2)
    full = train(_cfg(word_model_dir, tmp_path / "full", **kw), PROMPTS, reward_fn=says_blue, show_progress=False)
    crashed = train(_cfg(word_model_dir, tmp_path / "cut", stop_after=3, **kw), PROMPTS, reward_fn=says_blue,
                    show_progress=False)
    assert not crashed.completed and crashed.updates == 3
    assert (tmp_path / "cut" / "checkpoint" / "tether_state.json").is_file()
    resumed = train(_cfg(word_model_dir, tmp_path / "cut", **kw), PROMPTS, reward_fn=says_blue, resume=True,
                    show_progress=False)
    assert resumed.completed and resumed.updates == full.updates == 6
    steps = [r["step"] for r in _records(tmp_path / "cut")]
    assert steps == [1, 2, 3, 4, 5, 6]  # update 3 (after the checkpoint at 2) was redone, not duplicated
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # same samples, same updates, same weights
    assert not (tmp_path / "cut" / "checkpoint").exists()


def test_resume_refuses_other_settings(word_model_dir, tmp_path):
    train(_cfg(word_model_dir, tmp_path / "r", updates=4, checkpoint_every=1, stop_after=1), PROMPTS,
          reward_fn=says_blue, show_progress=False)
    with pytest.raises(TetherError, match="other prompts or settings"):
        train(_cfg(word_model_dir, tmp_path / "r", updates=4, checkpoint_every=1, lr=1e-4), PROMPTS,
              reward_fn=says_blue, resume=True, show_progress=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_runs_in_the_training_precision(word_model_dir, tmp_path, decode_precision, dtype):
    """Under bf16 autocast the rollout decodes in bf16 too (the fast path where bf16 matmuls are); fp32 stays fp32."""
    res = train(_cfg(word_model_dir, tmp_path / dtype, updates=1, dtype=dtype), PROMPTS, reward_fn=says_blue,
                show_progress=False)
    assert res.completed and decode_precision == [dtype == "bfloat16"]


def test_lora_reference_is_the_base_with_adapters_off(word_model_dir, tmp_path):
    from tether.models import LoraSettings

    res = train(_cfg(word_model_dir, tmp_path / "lora", updates=2, lr=1e-2, lora=LoraSettings(r=4, alpha=8)),
                PROMPTS, reward_fn=says_blue, show_progress=False)
    rec = _records(tmp_path / "lora")
    assert res.completed and rec[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start at zero
    assert rec[-1]["kl"] != pytest.approx(0.0, abs=1e-7)  # and move the policy away from the base


def test_pack_and_response_logits_match_a_plain_forward(word_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(word_model_dir).eval()
    prompts, responses = [[3, 4], [5, 6, 7, 8]], [[9, 1], [10, 11, 12]]
    ids, attn, mask = pack(prompts, responses, pad=0)
    assert ids.tolist() == [[0, 0, 3, 4, 9, 1, 0], [5, 6, 7, 8, 10, 11, 12]]
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    logits, hidden = response_logits(model, ids, attn, 4)  # (2, 3, V), (2, 3, D)
    for i, (p, r) in enumerate(zip(prompts, responses)):  # each row alone, unpadded
        alone = model(torch.tensor([p + r])).logits[0, len(p) - 1:len(p) + len(r) - 1]
        assert torch.allclose(logits[i, :len(r)], alone, atol=1e-5)


def test_prompt_order_is_a_fresh_shuffle_each_pass_and_splits_processes():
    seen = [i for u in range(4) for i in prompt_order(8, 4, u, 0, 1, seed=1)]
    assert sorted(seen[:8]) == list(range(8)) and sorted(seen[8:]) == list(range(8)) and seen[:8] != seen[8:]
    r0, r1 = prompt_order(8, 4, 0, 0, 2, seed=1), prompt_order(8, 4, 0, 1, 2, seed=1)
    assert sorted(r0 + r1) == list(range(8))


def test_bad_settings_are_refused(word_model_dir, tmp_path):
    with pytest.raises(TetherError, match="exactly one reward"):
        train(_cfg(word_model_dir, tmp_path / "x"), PROMPTS)
    with pytest.raises(TetherError, match="multiple of mini_batch_size"):
        train(_cfg(word_model_dir, tmp_path / "x", batch_size=6, mini_batch_size=4), PROMPTS, reward_fn=says_blue)
    with pytest.raises(TetherError, match="finite numbers"):
        train(_cfg(word_model_dir, tmp_path / "x", updates=1), PROMPTS, reward_fn=lambda p, r, f: [1.0],
              show_progress=False)


def test_cli_ppo_killed_with_sigkill_resumes_to_the_same_update_count(word_model_dir, tmp_path):
    """`tether ppo` as a user runs it: kill -9 mid-run, then --resume finishes all updates once each."""
    from tether.data.io import import_prompts
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", policy=str(word_model_dir))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    import_prompts(ws.store(), tmp_path / "prompts.txt", "train")
    (tmp_path / "blue.py").write_text(textwrap.dedent("""
        import time

        def reward(prompts, responses, finished):
            time.sleep(0.4)  # slow enough to be killed mid-run
            return [float("blue" in r.split()) for r in responses]
    """))
    cmd = [sys.executable, "-m", "tether", "ppo", "--reward-fn", f"{tmp_path / 'blue.py'}:reward", "--updates", "8",
           "--batch-size", "8", "--mini-batch-size", "4", "--max-new-tokens", "5", "--lr", "1e-3",
           "--checkpoint-every", "2", "--no-gold", "-w", str(ws.root)]
    env = os.environ | {"TETHER_WORKSPACE": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = ws.root / "runs" / "ppo-1" / "checkpoint" / "tether_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["update"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ws.root / "runs" / "ppo-1" / "model").exists()
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 updates" in done.stdout and "ppo-1/model" in done.stdout
    steps = [json.loads(x)["step"] for x in (ws.root / "runs" / "ppo-1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert json.loads((ws.root / "runs" / "ppo-1" / "metrics.json").read_text())["updates"] == 8
    assert not (ws.root / "runs" / "ppo-2").exists()


def test_cli_ppo_needs_a_reward(word_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tether.cli import app
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", policy=str(word_model_dir))
    res = CliRunner().invoke(app, ["ppo", "-w", str(ws.root)])
    assert res.exit_code == 1 and "no reward model in this workspace" in res.output
    res = CliRunner().invoke(app, ["ppo", "--reward-fn", "nowhere.py:f", "-w", str(ws.root)])
    assert res.exit_code == 1 and "no such file nowhere.py" in res.output
    res = CliRunner().invoke(app, ["ppo", "--reward-fn", "tests.test_ppo:says_blue", "-w", str(ws.root)])
    assert res.exit_code == 1 and "no prompts in split 'train'" in res.output
