"""Supervised fine-tuning (tether.recipes.sft) and `tether sft`, on the tiny random model."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
import typer
import yaml
from typer.testing import CliRunner

from tether.algos.losses import LinearNLL
from tether.commands.sft import sft as sft_command
from tether.errors import TetherError
from tether.models import LoraSettings, encode_prompt, load_model, load_policy
from tether import rollout
from tether.recipes import sft

MSGS = [{"role": "user", "content": "Name a colour."}]
QA = [("Name a colour.", "Blue."), ("Name a colour.", "Red, like a fire truck."), ("Name a fruit.", "A pear."),
      ("What is 2+2?", "Four, of course: it is simple arithmetic."), ("Say hi.", "Hi there!"),
      ("Name a planet.", "Mars, the red one."), ("Name a tree.", "An oak."), ("Count to three.", "One, two, three.")]


def demos(n: int = 8) -> list[list[dict]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in (QA * 5)[:n]]


def cfg_for(tiny_model_dir, tmp_path, **kw) -> sft.SFTConfig:
    base = dict(model=str(tiny_model_dir), lr=3e-3, epochs=4, batch_size=4, max_length=64, warmup=0.0,
                log_every=1, checkpoint_every=None, eval_fraction=0.0, samples=2, sample_max_new_tokens=4,
                out_dir=str(tmp_path / "sft"), seed=0)
    return sft.SFTConfig(**(base | kw))


# --- encoding -------------------------------------------------------------------------------------

def test_only_the_answer_and_its_end_of_turn_carry_labels(bundled_tokenizer):
    """SmolLM2's template: <system prompt> <user turn> "<|im_start|>assistant\\n" | "Blue" "." "<|im_end|>".
    "Blue." is two tokens (23390, 30), so exactly the last three positions carry labels; the "\\n" the
    template writes after <|im_end|> is dropped (it is never generated)."""
    tok = bundled_tokenizer
    ids, labels, truncated = sft.encode_demonstration(tok, sft.Demonstration(MSGS, "Blue."), max_length=512)
    prompt = encode_prompt(tok, MSGS)
    assert ids[:len(prompt)] == prompt and not truncated
    assert ids[len(prompt):] == [23390, 30, tok.eos_token_id] and tok.eos_token == "<|im_end|>"
    assert labels == [-100] * len(prompt) + [23390, 30, tok.eos_token_id]
    full = tok.apply_chat_template(MSGS + [{"role": "assistant", "content": "Blue."}], tokenize=False)
    assert tok.decode(ids) + "\n" == full  # the model's own template, once (SmolLM2 adds no BOS)
    # a raw prompt (base-model style): the answer's tokens, then EOS
    ids, labels, _ = sft.encode_demonstration(tok, sft.Demonstration("Once upon a time", " there was"), 512)
    assert ids == [6403, 1980, 253, 655, 665, 436, tok.eos_token_id]
    assert labels == [-100] * 4 + [665, 436, tok.eos_token_id]
    # too long: the end is cut, so the answer loses its EOS
    ids, labels, truncated = sft.encode_demonstration(tok, sft.Demonstration(MSGS, "Blue."), len(prompt) + 1)
    assert truncated and labels[-1] == 23390 and len(ids) == len(prompt) + 1


# --- packing --------------------------------------------------------------------------------------

def separate_losses(model, encoded) -> list[list[float]]:
    """Per answer token NLL of each demonstration run alone through the plain HF forward."""
    out = []
    for ids, labels in encoded:
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
        nll = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")  # (T-1,)
        out.append([nll[t - 1].item() for t, y in enumerate(labels) if y != -100 and t > 0])
    return out


@pytest.mark.parametrize("attn,head", [("sdpa", "fused"), ("eager", "fused"), ("sdpa", "model's own")])
def test_packed_rows_give_the_same_per_token_loss_as_separate_forwards(tiny_model_dir, bundled_tokenizer, attn,
                                                                       head, monkeypatch):
    tok = bundled_tokenizer
    model = load_model(str(tiny_model_dir))
    model.config._attn_implementation = attn
    if head == "model's own":  # as for a model that scales its logits: the full forward, same packed inputs
        monkeypatch.setattr(rollout, "LOGIT_TRANSFORMS", ("num_hidden_layers",))
    encoded = [sft.encode_demonstration(tok, sft.as_demonstration(d, i), 512)[:2] for i, d in enumerate(demos(6))]
    alone = separate_losses(model, encoded)
    policy = sft._Policy(model)
    for capacity in (None, 64, 10_000):
        packed = sft.pack(encoded, tok.pad_token_id, capacity)
        total, per_token = policy(*packed.inputs())
        for i in range(len(encoded)):
            got = per_token[packed.owners == i].tolist()
            assert got == pytest.approx(alone[i], abs=1e-5)
        assert total.item() == pytest.approx(sum(map(sum, alone)), rel=1e-5)
    one_row = sft.pack(encoded, tok.pad_token_id, 10_000)
    assert one_row.input_ids.shape[0] == 1
    # the system prompt and the shared question are computed once: far fewer tokens than given
    assert one_row.input_ids.shape[1] < 0.6 * one_row.tokens
    # a token's position id is its depth in its own demonstration
    first = encoded[0][0]
    row = one_row.input_ids[0].tolist()
    assert row[:10] == first[:10] and one_row.position_ids[0, :10].tolist() == list(range(10))


def test_fused_output_layer_matches_autograd():
    torch.manual_seed(0)
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    y = torch.randint(0, 50, (10,))
    total, per_token = LinearNLL.apply(h, w, y, 3)  # chunks of 3 tokens
    (2 * total).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.t(), y, reduction="none")
    (2 * ref.sum()).backward()
    assert torch.allclose(per_token, ref.detach(), atol=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-5) and torch.allclose(w.grad, w2.grad, atol=1e-5)


# --- training -------------------------------------------------------------------------------------

def test_training_changes_parameters_and_the_loss_falls(tiny_model_dir, tmp_path):
    before = {k: v.clone() for k, v in load_model(str(tiny_model_dir)).state_dict().items()}
    res = sft.train(cfg_for(tiny_model_dir, tmp_path, epochs=6, lr=3e-2), demos(8), eval_examples=demos(2),
                    show_progress=False)
    logs = [json.loads(x) for x in (res.out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in logs if "loss" in x]
    assert res.completed and res.steps == res.total_steps == 12 and len(losses) == 12
    assert all(map(lambda v: v == v and abs(v) < 1e3, losses))
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    after = load_model(str(res.model_dir)).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert logs[-1]["eval_loss"] < losses[0] and len(logs[-1]["samples"]) == 2
    assert {"prompt", "response", "finished", "reference"} <= set(logs[-1]["samples"][0])
    assert list((res.out_dir / "tb").iterdir()) and not (res.out_dir / "checkpoint").exists()
    model, tok = load_policy(str(res.model_dir))  # plain HF folder, loadable as a policy
    assert tok.eos_token == "<|im_end|>" and model.config.num_hidden_layers == 2


def test_accumulation_is_the_same_step(tiny_model_dir, tmp_path):
    """Batch 4 x accumulation 1 (packed) and batch 1 x accumulation 4 (one row each) draw the same
    demonstrations per step and average over the same answer tokens, so every step has the same loss
    and gradient norm (TRL's invariance test; step 2's loss also checks the weights after step 1)."""
    a = sft.train(cfg_for(tiny_model_dir, tmp_path / "a", epochs=1, samples=0), demos(8), show_progress=False)
    b = sft.train(cfg_for(tiny_model_dir, tmp_path / "b", epochs=1, samples=0, batch_size=1, grad_accum=4),
                  demos(8), show_progress=False)
    assert a.steps == b.steps == 2
    la, lb = ([json.loads(x) for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()][:2] for r in (a, b))
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
        assert x["tokens"] == y["tokens"] and x["computed_fraction"] < 0.7 < y["computed_fraction"] == 1.0


def test_lora_trains_adapters_and_saves_merged(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path, epochs=2, lora=LoraSettings(r=4, alpha=8), samples=1)
    res = sft.train(cfg, demos(8), show_progress=False)
    assert res.completed and not hasattr(res.model, "peft_config")
    assert not (res.model_dir / "adapter_config.json").exists()
    base = load_model(str(tiny_model_dir)).state_dict()
    merged = load_model(str(res.model_dir)).state_dict()
    assert set(base) == set(merged)
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # adapted linear layers only; embeddings frozen
    adapter = sft.train(dataclasses.replace(cfg, merge_lora=False, out_dir=str(tmp_path / "adapter")), demos(8),
                        show_progress=False)
    assert (adapter.model_dir / "adapter_config.json").exists()


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path, epochs=3, checkpoint_every=2, samples=0)
    whole = sft.train(dataclasses.replace(cfg, out_dir=str(tmp_path / "whole")), demos(8), show_progress=False)
    crashed = sft.train(dataclasses.replace(cfg, stop_after=3), demos(8), show_progress=False)
    assert not crashed.completed and crashed.steps == 3 and (tmp_path / "sft" / "checkpoint").is_dir()
    resumed = sft.train(cfg, demos(8), resume=True, show_progress=False)
    assert resumed.completed and resumed.steps == whole.steps == resumed.total_steps == 6
    sw, sr = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(sw[k], sr[k], atol=1e-6) for k in sw)
    steps = [json.loads(x)["step"] for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # step 3's line was dropped and logged again; the last line is eval
    sft.train(dataclasses.replace(cfg, stop_after=3), demos(8), show_progress=False)
    with pytest.raises(TetherError, match="other data or settings"):
        sft.train(cfg, demos(7), resume=True, show_progress=False)


def test_bfloat16_autocast_runs(tiny_model_dir, tmp_path):
    res = sft.train(cfg_for(tiny_model_dir, tmp_path, epochs=1, dtype="bfloat16", samples=1), demos(8),
                    show_progress=False)
    logs = [json.loads(x) for x in (res.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert res.completed and all(abs(x["loss"] - 10.8) < 0.5 for x in logs if "loss" in x)
    assert next(res.model.parameters()).dtype == torch.float32  # autocast: the weights stay float32


# --- mistakes -------------------------------------------------------------------------------------

def test_bad_input_is_a_clear_error(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path)
    with pytest.raises(TetherError, match="no demonstrations"):
        sft.train(cfg, [])
    no_answer = demos(2) + [[{"role": "user", "content": "Hello?"}]]
    with pytest.raises(TetherError, match="demonstration #2: no assistant turn at the end"):
        sft.train(cfg, no_answer)
    with pytest.raises(TetherError, match="a.jsonl, line 3: the answer is empty"):
        sft.train(cfg, [sft.Demonstration(MSGS, " ", "a.jsonl, line 3")])
    with pytest.raises(TetherError, match="batch_size must be at least 1, got 0"):
        sft.train(dataclasses.replace(cfg, batch_size=0), demos(2))
    with pytest.raises(TetherError, match="schedule must be cosine, linear or constant"):
        sft.train(dataclasses.replace(cfg, schedule="exp"), demos(2))
    with pytest.raises(TetherError, match="prompt fills max_length=4"):
        sft.train(dataclasses.replace(cfg, max_length=4), demos(2))


# --- the command ----------------------------------------------------------------------------------

@pytest.fixture
def cli():
    app = typer.Typer()
    app.command()(sft_command)

    @app.command()
    def other():  # two commands, so typer keeps `sft` as a named subcommand
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_sft_command_end_to_end(cli, workspace, tmp_path):
    from tether.data.io import import_demonstrations

    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"messages": d}) + "\n" for d in demos(40)))
    import_demonstrations(workspace.store(), path)
    workspace.config.threads = 1  # the command sets torch's thread count from tether.yaml
    workspace.save()
    r = cli("sft", "--epochs", 1, "--batch-size", 4, "--max-length", 64, "--lr", 1e-3, "-w", workspace.root)
    assert r.exit_code == 0, r.output
    model_dir = workspace.root / "runs" / "sft-1" / "model"
    assert "40 demonstrations to train on" in r.output and "held-out loss" in r.output  # 5% held out
    assert r.output.strip().splitlines()[-1].startswith(f"SFT model: {model_dir}")
    policy = yaml.safe_load((workspace.root / "tether.yaml").read_text())["policy"]
    assert policy == str(model_dir)  # the workspace now samples from the SFT model
    load_policy(policy)
    with workspace.store().session() as s:
        from tether.data import schema as S

        run = s.query(S.Run).filter_by(stage="sft").one()
        assert run.status == "done" and run.path.endswith("sft-1") and "eval_loss" in run.metrics
    # --data adds a file (and checks it line by line); --no-set-policy leaves tether.yaml alone
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": demos(1)[0]}) + "\n" + json.dumps({"messages": MSGS}) + "\n")
    r = cli("sft", "--data", bad, "-w", workspace.root)
    assert r.exit_code == 1 and "bad.jsonl, line 2" in r.output and "Traceback" not in r.output
    r = cli("sft", "--batch-size", 0, "-w", workspace.root)
    assert r.exit_code == 1 and "batch_size must be at least 1, got 0" in r.output
    assert not (workspace.root / "runs" / "sft-2").exists()  # refused before a run folder was made
    r = cli("sft", "--data", path, "--no-stored", "--max-steps", 1, "--max-length", 64, "--no-set-policy",
            "-w", workspace.root)
    assert r.exit_code == 0, r.output
    assert "runs/sft-" in r.output.splitlines()[-1] and "now the policy" not in r.output


def test_sft_command_without_demonstrations_says_what_to_do(cli, workspace):
    r = cli("sft", "-w", workspace.root)
    assert r.exit_code == 1 and "tether import demos" in r.output


def test_sft_command_resumes_the_latest_run(cli, workspace, tmp_path, monkeypatch):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"messages": d}) + "\n" for d in demos(16)))
    r = cli("sft", "--data", path, "--resume", "-w", workspace.root)
    assert r.exit_code == 1 and "nothing to resume: there is no sft run yet" in r.output
    real_train = sft.train
    monkeypatch.setattr(sft, "train", lambda cfg, *a, **kw: real_train(
        dataclasses.replace(cfg, checkpoint_every=1, stop_after=None if kw.get("resume") else 2, threads=1), *a, **kw))
    args = ("sft", "--data", path, "--epochs", 1, "--batch-size", 4, "--max-length", 64, "-w", workspace.root)
    r = cli(*args)  # killed after step 2 of 4 (stop_after): no model, a checkpoint
    assert r.exit_code == 1 and "stopped at step 2 of 4" in r.output
    assert (workspace.root / "runs" / "sft-1" / "checkpoint").is_dir()
    r = cli(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "runs/sft-1/model" in r.output.splitlines()[-1] and not (workspace.root / "runs" / "sft-2").exists()
    r = cli(*args, "--resume")
    assert r.exit_code == 1 and "sft-1 has no checkpoint" in r.output
