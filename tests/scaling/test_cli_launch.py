"""The README's "Scaling out" invocation, on CPU: `accelerate launch --config_file
configs/accelerate/ddp.yaml -m tether.cli ppo ...` with 2 processes (gloo) writes one run folder,
one metrics log and one database record; and the vLLM backend refuses clearly where it cannot run
(the GPU check itself is skipped, with its reason, without CUDA and vLLM)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tether.rollout_vllm import unavailable

sys.path.insert(0, str(Path(__file__).parent))
from test_invariance import _env, _free_port  # noqa: E402

VLLM_MISSING = unavailable()

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["say a color", "the sky is", "name a color please", "the sea is"]


def test_accelerate_launch_of_the_cli_on_two_processes(word_model_dir, tmp_path):
    from tether.data.io import import_prompts
    from tether.workspace import init_workspace, open_workspace

    ws = init_workspace(tmp_path / "ws", policy=str(word_model_dir))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    import_prompts(ws.store(), tmp_path / "prompts.txt", "train")
    (tmp_path / "blue.py").write_text(textwrap.dedent("""
        def reward(prompts, responses, finished):
            return [float("blue" in r.split()) for r in responses]
    """))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
              "--main_process_port", str(_free_port()), "-m", "tether.cli"]
    args = ["ppo", "--reward-fn", f"{tmp_path / 'blue.py'}:reward", "--updates", "3", "--batch-size", "2",
            "--mini-batch-size", "2", "--max-new-tokens", "4", "--lr", "1e-3", "--checkpoint-every", "2",
            "--threads", "1", "--no-gold", "-w", str(ws.root)]
    done = subprocess.run(launch + args, env=_env() | {"TETHER_WORKSPACE": ""}, capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert sorted(p.name for p in (ws.root / "runs").iterdir()) == ["ppo-1"]  # one folder, made by the main process
    assert done.stdout.count("3 updates") == 1  # the summary is printed once, by the main process
    steps = [json.loads(x)["step"] for x in (ws.root / "runs" / "ppo-1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (ws.root / "runs" / "ppo-1" / "model" / "config.json").is_file()
    assert open_workspace(ws.root).store().counts()["runs"] == 1  # one database record, not one per process



@pytest.mark.parametrize("stage", ["rloo", "dpo"])
def test_other_stages_under_accelerate_launch_make_one_run(stage, word_model_dir, tmp_path):
    """The other training commands are launch-aware too: one run folder, one database record, one summary."""
    from tether.data.io import import_prompts
    from tether.workspace import init_workspace, open_workspace

    ws = init_workspace(tmp_path / "ws", policy=str(word_model_dir))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    import_prompts(ws.store(), tmp_path / "prompts.txt", "train")
    (tmp_path / "blue.py").write_text("def reward(prompts, responses, finished):\n"
                                      "    return [float('blue' in r.split()) for r in responses]\n")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": " blue", "rejected": " red"}) + "\n"
                                                  for p in PROMPTS * 2))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
              "--main_process_port", str(_free_port()), "-m", "tether.cli"]
    args = {"rloo": ["rloo", "--reward-fn", f"{tmp_path / 'blue.py'}:reward", "--updates", "2", "--prompts-per-update",
                     "1", "--k", "2", "--max-new-tokens", "4", "--no-gold"],
            "dpo": ["dpo", "--data", str(tmp_path / "pairs.jsonl"), "--batch-size", "2", "--max-length", "32"]}[stage]
    done = subprocess.run(launch + args + ["-w", str(ws.root)], env=_env() | {"TETHER_WORKSPACE": ""},
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert sorted(p.name for p in (ws.root / "runs").iterdir()) == [f"{stage}-1"]
    assert done.stdout.count("(metrics: ") == 1, done.stdout  # the recipe's last line, by the main process alone
    assert done.stdout.count("compare it with" if stage == "rloo" else "held-out preference accuracy") == 1
    assert (ws.root / "runs" / f"{stage}-1" / "model" / "config.json").is_file()
    assert open_workspace(ws.root).store().counts()["runs"] == 1


def test_vllm_backend_is_refused_clearly_without_cuda_or_vllm(word_model_dir, tmp_path):
    from tether import rollout_vllm
    from tether.errors import TetherError
    from tether.recipes.online import OnlineConfig
    from tether.recipes.online import train as online_train
    from tether.recipes.ppo import PPOConfig
    from tether.recipes.ppo import train as ppo_train

    why = rollout_vllm.unavailable()
    if why is None:
        pytest.skip("CUDA and vLLM are both here: the refusal cannot be shown")
    reward = lambda p, r, f: [0.0] * len(r)  # noqa: E731
    with pytest.raises(TetherError, match="rollout_backend 'vllm' cannot run here"):
        ppo_train(PPOConfig(policy=str(word_model_dir), rollout_backend="vllm", out_dir=str(tmp_path / "p")),
                  PROMPTS, reward_fn=reward, show_progress=False)
    with pytest.raises(TetherError, match="rollout_backend 'vllm' cannot run here"):
        online_train(OnlineConfig(policy=str(word_model_dir), rollout_backend="vllm", out_dir=str(tmp_path / "o")),
                     PROMPTS, reward_fn=reward, show_progress=False)
    with pytest.raises(TetherError, match="must be one of hf, vllm"):
        rollout_vllm.check_backend("sglang", "ppo")


@pytest.mark.skipif(VLLM_MISSING is not None, reason=f"the vLLM backend needs CUDA and vllm: {VLLM_MISSING}")
def test_vllm_engine_log_probs_follow_the_pushed_weights(word_model_dir):
    """On a GPU with vLLM: samples are seeded per sequence, the engine's log-probs (logits / temperature)
    match the trainer's for the same weights, and still do after the trainer's weights change and are
    pushed with load_weights (without the push they would not: the check below shows the change is large)."""
    import torch

    from tether import models, rollout
    from tether.rollout_vllm import VLLMRollout

    model, tok = models.load_policy(str(word_model_dir))
    engine = VLLMRollout(str(word_model_dir), tok, dtype="float32", gpu_memory_utilization=0.2, max_model_len=128)
    ids = [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]
    stop = rollout.eos_ids(model, tok)

    def trainer_logprobs(gens):  # (B, T) under the trainer's current weights, temperature 0.7
        responses = [g.token_ids + ([g.stop_token] if g.finished else []) for g in gens]
        x, a, mask = rollout.pack(ids, responses, tok.pad_token_id)
        with torch.no_grad():
            logits, _ = rollout.response_logits(model, x, a, x.shape[1] - mask.shape[1])
        lp = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, x[:, -mask.shape[1]:, None])[..., 0]
        return [lp[i, :g.num_tokens] for i, g in enumerate(gens)]

    for round_ in range(2):
        gens = engine.generate(list(enumerate(ids)), temperature=0.7, max_new_tokens=6, seeds=[1, 2, 3, 4], stop_ids=stop)
        again = engine.generate(list(enumerate(ids)), temperature=0.7, max_new_tokens=6, seeds=[1, 2, 3, 4], stop_ids=stop)
        assert [g.token_ids for g in gens] == [g.token_ids for g in again]  # seeded per sequence
        mine = trainer_logprobs(gens)
        for g, lp in zip(gens, mine):
            assert len(g.logprobs) == g.num_tokens and torch.allclose(g.logprobs, lp, atol=2e-3)
        if round_ == 0:
            old = [lp.clone() for lp in mine]
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5 * torch.randn_like(p))
            assert max((a - b).abs().max().item() for a, b in zip(trainer_logprobs(gens), old)) > 0.05
            engine.load_weights(model)
