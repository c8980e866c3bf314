"""DPO (tether.recipes.dpo, tether.commands.dpo) on the tiny model, and against TRL 1.16's DPOTrainer."""

import dataclasses
import gc
import json
import math
import random
import shutil
import warnings

import pytest
import torch

from tether.errors import InputError, TetherError
from tether.models import LoraSettings, encode_prompt
from tether.recipes import dpo
from tether.recipes.rm import PreferenceExample

PROMPTS = ["Name a colour.", "What colour do you like?", "Pick a colour for the wall.", "Describe the sky."]
FILLER = ["the", "a", "my", "nice", "deep", "light", "old", "new", "car", "sea", "door", "shirt", "is", "very"]
TRL_ROWS = [  # TRL's conversational format
    {"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "Blue, like the sea."}],
     "rejected": [{"role": "assistant", "content": "Red."}]},
    {"prompt": [{"role": "user", "content": "What is 2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "Five, I think, or maybe six."}]},
    {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi there!"}],
     "rejected": [{"role": "assistant", "content": "no"}]},
]


def colour_pairs(n: int, seed: int = 0) -> list[PreferenceExample]:
    """Chosen answers say "blue", rejected ones "red", around shared filler words."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words, at = rng.sample(FILLER, 4), rng.randrange(5)
        pairs.append(PreferenceExample([{"role": "user", "content": rng.choice(PROMPTS)}],
                                       " ".join(words[:at] + ["blue"] + words[at:]),
                                       " ".join(words[:at] + ["red"] + words[at:])))
    return pairs


def cfg_for(tiny_model_dir, tmp_path, **kw) -> dpo.DPOConfig:
    base = dict(model=str(tiny_model_dir), lr=1e-2, epochs=1, batch_size=4, max_length=64, warmup=0.0, log_every=1,
                checkpoint_every=None, out_dir=str(tmp_path / "dpo"), seed=0, eval_fraction=0.0)
    return dpo.DPOConfig(**(base | kw))


def metrics_lines(result) -> list[dict]:
    return [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]


def sharpened(path):
    """The tiny model with every weight matrix x8, so its log-probs are far from uniform."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


# --- encoding and the shared-prompt forward ---------------------------------------------------------

def test_cut_off_response_gets_no_end_of_turn(bundled_tokenizer):
    tok = bundled_tokenizer
    msgs = [{"role": "user", "content": "Name a colour."}]
    done = dpo.encode_pair(tok, PreferenceExample(msgs, "Blue, like the sea", "Red", True, False), 512)
    assert done.prompt == encode_prompt(tok, msgs)
    assert done.chosen[-2:] == tok("<|im_end|>\n", add_special_tokens=False).input_ids  # finished: end of turn
    assert tok.decode(done.rejected) == "Red" and tok.eos_token_id not in done.rejected  # cut off: nothing appended
    long = PreferenceExample(msgs, "blue " * 40, "red", True, True)
    cut = dpo.encode_pair(tok, long, 20)  # prompt keeps its BOS and a quarter of the budget; responses lose their end
    assert cut.prompt[:1] == [tok.bos_token_id] and len(cut.prompt) == 5
    assert len(cut.prompt) + len(cut.chosen) == 20 and tok.eos_token_id not in cut.chosen


def test_shared_prompt_rows_give_the_log_probs_of_separate_rows(tiny_model_dir, bundled_tokenizer):
    """prompt‖chosen‖rejected in one row under the 4-D mask == the plain per-sequence log-probs; the pairs
    of a ranking (one prompt, three answers, three pairs) make one row holding each answer once."""
    model = sharpened(tiny_model_dir).eval()
    pairs = [PreferenceExample(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in TRL_ROWS]
    pairs.append(PreferenceExample("plain prompt", "yes", "no no no", True, False))
    ranked = ["Blue, like the sea.", "Green.", "Red, red, red and more red."]  # best to worst
    pairs += [PreferenceExample("Name a colour.", ranked[i], ranked[j]) for i in range(3) for j in range(i + 1, 3)]
    toks = [dpo.encode_pair(bundled_tokenizer, p, 512) for p in pairs]
    shared = dpo.collate(toks, bundled_tokenizer.pad_token_id, True)
    assert shared["input_ids"].shape[0] == 5  # four prompts of one pair each, one ranking
    assert shared["seg"].max() + 1 == 2 * 4 + 3  # 11 distinct responses of 14 pair sides
    assert shared["pick"][4:].tolist() == [[8, 9], [8, 10], [9, 10]]
    expected = []
    with torch.no_grad():
        for t in toks:
            for response in (t.chosen, t.rejected):
                ids = torch.tensor([t.prompt + response])
                lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]  # (T-1,)
                expected.append(lp[len(t.prompt) - 1:].sum())
        expected = torch.stack(expected).view(-1, 2)
        for share in (True, False):
            got = dpo._PairLogps(model)(**dpo.collate(toks, bundled_tokenizer.pad_token_id, share))
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-6)
        model.config._attn_implementation = "eager"  # the mask becomes additive
        got = dpo._PairLogps(model)(**dpo.collate(toks, bundled_tokenizer.pad_token_id, True))
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-6)


def test_a_model_that_transforms_its_logits_runs_its_own_forward(tiny_model_dir, bundled_tokenizer, monkeypatch):
    """As for a model that scales or caps its logits (a config field in rollout.LOGIT_TRANSFORMS): the
    log-probs come from the model's own forward, on the same shared-prompt rows, and still equal the
    plain per-sequence log-probs."""
    from tether import rollout

    model = sharpened(tiny_model_dir).eval()
    toks = [dpo.encode_pair(bundled_tokenizer, PreferenceExample("plain prompt", "yes", "no no no", True, False), 512)]
    batch = dpo.collate(toks, bundled_tokenizer.pad_token_id, True)
    with torch.no_grad():
        fused = dpo._PairLogps(model)(**batch)
        monkeypatch.setattr(rollout, "LOGIT_TRANSFORMS", ("num_hidden_layers",))
        assert rollout.plain_head(model) is None
        calls = []
        monkeypatch.setattr(type(model), "forward", lambda self, *a, _f=type(model).forward, **k: calls.append(1) or
                            _f(self, *a, **k))
        own = dpo._PairLogps(model)(**batch)
    assert calls == [1]
    torch.testing.assert_close(own, fused, atol=1e-4, rtol=1e-6)


# --- (a) the same loss as TRL 1.16's DPOTrainer ----------------------------------------------------

@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("trl_loss,ours,beta", [("sigmoid", "dpo", 0.3), ("ipo", "ipo", 0.5)])
def test_loss_and_gradient_match_trl_dpo_trainer(tiny_model_dir, bundled_tokenizer, tmp_path, trl_loss, ours, beta):
    """TRL tokenizes and batches the pairs, and its own `compute_loss` scores the batch (policy: the tiny
    model sharpened, reference: the tiny model as it is). tether encodes the same pairs (same tokens),
    and its recipe path (collate -> _PairLogps -> batch_loss) gives the loss within 1e-5 and the same
    gradient."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=3, max_length=512, beta=beta,
                     loss_type=trl_loss, report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
                     disable_tqdm=True)
    trainer = DPOTrainer(model=sharpened(tiny_model_dir), ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         args=args, train_dataset=Dataset.from_list(TRL_ROWS), processing_class=bundled_tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(TRL_ROWS))]
    trl_batch = trainer._prepare_inputs(trainer.data_collator(rows))
    trl_loss_value = trainer.compute_loss(trainer.model, trl_batch)
    trl_loss_value.backward()
    trl_grad = trainer.model.model.layers[1].mlp.down_proj.weight.grad.clone()

    pairs = [PreferenceExample(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in TRL_ROWS]
    toks = [dpo.encode_pair(bundled_tokenizer, p, 512) for p in pairs]
    for row, t in zip(rows, toks):  # the very same tokens
        assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (t.prompt, t.chosen, t.rejected)
    batch = dpo.collate(toks, bundled_tokenizer.pad_token_id)
    policy = sharpened(tiny_model_dir).eval()
    with torch.no_grad():
        ref = dpo._PairLogps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())(**batch)  # (3, 2)
    logps = dpo._PairLogps(policy)(**batch)  # (3, 2)
    loss, stats = dpo.batch_loss(dpo.DPOConfig(loss=ours, beta=beta), 0.0, logps, ref, dpo.response_counts(toks),
                                 torch.ones(3))
    loss.backward()
    assert abs(loss.item() - math.log(2)) > 0.01  # policy and reference differ: not the trivial log 2
    assert loss.item() == pytest.approx(trl_loss_value.item(), abs=1e-5)
    torch.testing.assert_close(policy.model.layers[1].mlp.down_proj.weight.grad, trl_grad, atol=1e-6, rtol=1e-4)
    mode = "train" if trainer.model.training else "eval"
    trl_metrics = {k: sum(v) / len(v) for k, v in trainer._metrics[mode].items()}
    assert stats["accuracy"] / 3 == pytest.approx(trl_metrics["rewards/accuracies"])
    assert stats["margin"] / 3 == pytest.approx(trl_metrics["rewards/margins"], abs=1e-4)


def test_batch_loss_weights_by_hand():
    """Two pairs with h = 2 and h = 0 at beta 0.1: losses 0.598139 and ln 2 = 0.693147; weights (1, 0.5):
    loss = (0.598139 + 0.5 * 0.693147) / 2 = 0.472356 (divided by B, not by the weights' sum).
    Rewards 0.1 * (logp - ref): chosen (0.1, 0), rejected (-0.1, 0); accuracy counts strict wins: 1."""
    logps, ref = torch.tensor([[-1.0, -3.0], [-5.0, -4.0]]), torch.tensor([[-2.0, -2.0], [-5.0, -4.0]])
    loss, stats = dpo.batch_loss(dpo.DPOConfig(beta=0.1), 0.0, logps, ref, torch.ones(2, 2), torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(0.472356, abs=1e-6)
    assert stats["accuracy"] == 1 and stats["margin"] == pytest.approx(0.2) and stats["pairs"] == 2


# --- (b) training on the tiny model ------------------------------------------------------------------

def test_training_changes_the_policy_and_the_loss_falls(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    pairs = colour_pairs(8)
    result = dpo.train(cfg_for(tiny_model_dir, tmp_path, epochs=8), pairs, eval_pairs=colour_pairs(4, seed=1),
                       show_progress=False)
    assert result.completed and result.steps == result.total_steps == 16
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    saved = AutoModelForCausalLM.from_pretrained(result.model_dir)  # plain HF folder
    assert not torch.allclose(saved.model.layers[0].self_attn.q_proj.weight, start.model.layers[0].self_attn.q_proj.weight)
    lines = [x for x in metrics_lines(result) if "loss" in x]
    assert all(math.isfinite(x["loss"]) for x in lines)
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1: the policy is the reference
    assert sum(x["loss"] for x in lines[-4:]) < 0.7 * sum(x["loss"] for x in lines[:4])
    assert lines[-1]["margin"] > 0 and lines[-1]["reward_chosen"] > lines[-1]["reward_rejected"]
    for key in ("reward_chosen", "reward_rejected", "margin", "accuracy", "lr", "grad_norm", "pairs_per_s"):
        assert key in lines[-1]
    m = result.metrics
    assert m["eval_pairs"] == 4 and m["eval_accuracy"] == 1.0 and m["eval_loss"] < 0.5
    assert list((result.out_dir / "tb").iterdir())  # TensorBoard events


def test_batch_of_8_equals_two_accumulated_batches_of_4(tiny_model_dir, tmp_path, monkeypatch):
    """One step on the same 8 pairs: batch 8 x accumulation 1 and batch 4 x accumulation 2 reach the optimizer
    with the same loss and gradients (the loss is a mean over pairs). Gradients, not weights, are compared:
    Adam's first step is about lr * sign(g), which turns rounding noise on near-zero gradients into +-lr."""
    grads, step = [], torch.optim.AdamW.step

    def spy(self, *args, **kw):
        grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return step(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    pairs = colour_pairs(8)
    one = dpo.train(cfg_for(tiny_model_dir, tmp_path / "a", batch_size=8), pairs, show_progress=False)
    two = dpo.train(cfg_for(tiny_model_dir, tmp_path / "b", batch_size=4, grad_accum=2), pairs, show_progress=False)
    assert one.steps == two.steps == 1 and len(grads) == 2
    assert metrics_lines(one)[0]["loss"] == pytest.approx(metrics_lines(two)[0]["loss"], abs=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("loss,extra", [("ipo", {}), ("cdpo", {"label_smoothing": 0.2})])
def test_ipo_and_cdpo_train(tiny_model_dir, tmp_path, loss, extra):
    result = dpo.train(cfg_for(tiny_model_dir, tmp_path, loss=loss, beta=0.5, epochs=6, **extra), colour_pairs(8),
                       show_progress=False)
    lines = [x for x in metrics_lines(result) if "loss" in x]
    assert all(math.isfinite(x["loss"]) for x in lines) and result.metrics["loss_type"] == loss
    assert lines[-1]["loss"] < lines[0]["loss"] and lines[-1]["margin"] > 0


def live_models() -> int:
    """Causal LMs alive in this process (the tiny model is a Llama)."""
    from transformers import LlamaForCausalLM

    gc.collect()
    with warnings.catch_warnings():  # isinstance on every object touches deprecated torch module attributes
        warnings.simplefilter("ignore")
        return sum(isinstance(o, LlamaForCausalLM) for o in gc.get_objects())


def test_lora_reference_is_the_adapter_disabled_and_no_second_model(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen, forward = [], dpo._PairLogps.forward

    def spy(self, *args, **kw):
        adapter_off = all(m.disable_adapters for m in self.model.modules() if hasattr(m, "lora_A"))
        seen.append((torch.is_grad_enabled(), live_models(), adapter_off))
        return forward(self, *args, **kw)

    monkeypatch.setattr(dpo._PairLogps, "forward", spy)
    before = live_models()
    cfg = cfg_for(tiny_model_dir, tmp_path, lora=LoraSettings(r=4, alpha=8), lr=1e-2, epochs=3)
    result = dpo.train(cfg, colour_pairs(8), show_progress=False)
    assert {n for _, n, _ in seen} == {before + 1}  # one model in memory at every forward, reference included
    assert [(g, off) for g, _, off in seen] == [(False, True)] + [(True, False)] * 6  # reference: adapter off
    cache = torch.load(result.out_dir / "reference.pt")
    toks = [dpo.encode_pair(result.tokenizer, p, 64) for p in colour_pairs(8)]
    with torch.no_grad():  # the cached reference is the base model's own log-probs
        base = forward(dpo._PairLogps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()),
                       **dpo.collate(toks, result.tokenizer.pad_token_id))
    torch.testing.assert_close(torch.sort(cache["train"], 0)[0], torch.sort(base, 0)[0], atol=1e-4, rtol=1e-6)
    saved = AutoModelForCausalLM.from_pretrained(result.model_dir)  # adapters merged into a plain model
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(saved.model.layers[0].self_attn.q_proj.weight, start.model.layers[0].self_attn.q_proj.weight)
    torch.testing.assert_close(saved.model.embed_tokens.weight, start.model.embed_tokens.weight)  # not adapted


def test_reference_is_computed_once_and_cached(tiny_model_dir, tmp_path, monkeypatch):
    """Forwards without gradients: one reference batch before training and the final evaluation; the loop
    makes exactly one forward per micro-batch. A second run in the same folder reads reference.pt."""
    calls, forward = [], dpo._PairLogps.forward

    def spy(self, *args, **kw):
        calls.append(torch.is_grad_enabled())
        return forward(self, *args, **kw)

    monkeypatch.setattr(dpo._PairLogps, "forward", spy)
    cfg = cfg_for(tiny_model_dir, tmp_path, epochs=2, ref_batch_size=16)
    first = dpo.train(cfg, colour_pairs(8), eval_pairs=colour_pairs(4, seed=1), show_progress=False)
    assert calls == [False, False] + [True] * 4 + [False]  # reference (train, eval), 4 steps, evaluation
    assert not first.metrics["reference_reused"] and (first.out_dir / "reference.pt").is_file()
    calls.clear()
    again = dpo.train(cfg, colour_pairs(8), eval_pairs=colour_pairs(4, seed=1), show_progress=False)
    assert calls == [True] * 4 + [False] and again.metrics["reference_reused"]
    assert again.metrics["eval_loss"] == pytest.approx(first.metrics["eval_loss"], abs=1e-6)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch):
    pairs = colour_pairs(24)  # 24 pairs in batches of 4, 2 epochs = 12 steps
    settings = dict(epochs=2, checkpoint_every=5, lr=3e-3)
    straight = dpo.train(cfg_for(tiny_model_dir, tmp_path / "a", **settings), pairs, show_progress=False)
    assert straight.steps == 12

    cfg = cfg_for(tiny_model_dir, tmp_path / "b", **settings)
    crashed = dpo.train(dataclasses.replace(cfg, stop_after=7), pairs, show_progress=False)
    assert not crashed.completed and crashed.steps == 7 and crashed.model_dir is None
    assert json.loads((tmp_path / "b" / "dpo" / "checkpoint" / "tether_state.json").read_text())["step"] == 5

    with pytest.raises(TetherError, match="other data or settings"):
        dpo.train(dataclasses.replace(cfg, beta=0.2), pairs, resume=True, show_progress=False)
    shutil.copytree(tmp_path / "b", tmp_path / "c")  # the same crash, but the reference cache lost too
    (tmp_path / "c" / "dpo" / "reference.pt").unlink()
    recomputed = dpo.train(dataclasses.replace(cfg, out_dir=str(tmp_path / "c" / "dpo")), pairs, resume=True,
                           show_progress=False)  # the reference comes from the starting weights, not step 5's
    assert recomputed.steps == 12 and not recomputed.metrics["reference_reused"]
    calls, forward = [], dpo._PairLogps.forward
    monkeypatch.setattr(dpo._PairLogps, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    resumed = dpo.train(cfg, pairs, resume=True, show_progress=False)
    assert len(calls) == 7 and resumed.metrics["reference_reused"]  # steps 6..12 only: no reference pass again
    assert resumed.completed and resumed.steps == resumed.total_steps == 12
    assert not (tmp_path / "b" / "dpo" / "checkpoint").exists()
    assert [x["step"] for x in metrics_lines(resumed) if "loss" in x] == list(range(1, 13))
    for (name, a), b, c in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(),
                               recomputed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5, msg=name)


# --- errors a user can cause -----------------------------------------------------------------------

def test_bad_input_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(TetherError, match="no preference pairs"):
        dpo.train(cfg_for(tiny_model_dir, tmp_path), [], show_progress=False)
    with pytest.raises(TetherError, match="unknown loss 'kto': choose one of dpo, ipo, cdpo"):
        dpo.train(cfg_for(tiny_model_dir, tmp_path, loss="kto"), colour_pairs(4), show_progress=False)
    with pytest.raises(TetherError, match="use loss 'cdpo'"):
        dpo.check_config(dpo.DPOConfig(label_smoothing=0.1))
    with pytest.raises(TetherError, match="beta must be > 0"):
        dpo.check_config(dpo.DPOConfig(beta=0.0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "chosen": "good"}\n')
    with pytest.raises(InputError, match="line 1: missing field 'rejected'"):
        dpo.read_pairs(bad)


# --- the command -----------------------------------------------------------------------------------

@pytest.fixture
def cli(workspace):
    import typer
    from typer.testing import CliRunner

    from tether.commands.dpo import dpo as command

    app = typer.Typer()
    app.command()(command)
    app.callback()(lambda: None)  # keep `dpo` as a subcommand name
    workspace.config.threads = 1
    workspace.save()
    return lambda *args: CliRunner().invoke(app, ["dpo", *map(str, args), "-w", str(workspace.root)])


def test_cli_trains_on_stored_feedback_then_on_a_file(cli, workspace, tmp_path):
    from sqlalchemy import select

    from tether.data import schema as S
    from tether.data.io import import_preferences

    rows = [{"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected} for p in colour_pairs(12)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_preferences(workspace.store(), tmp_path / "prefs.jsonl")
    r = cli("--epochs", 2, "--batch-size", 4, "--lr", 1e-2, "--max-length", 64, "--beta", 0.2)
    assert r.exit_code == 0, r.output
    model_dir = workspace.root / "runs" / "dpo-1" / "model"
    assert "12 pairs (12 from comparisons" in r.output
    assert r.output.strip().splitlines()[-1].endswith(f"policy: {model_dir}") and (model_dir / "config.json").is_file()
    with workspace.store().session() as s:
        run = s.scalars(select(S.Run).where(S.Run.stage == "dpo")).one()
        assert run.status == "done" and run.metrics["steps"] == 6 and run.path == str(model_dir.parent)

    r = cli("--data", tmp_path / "prefs.jsonl", "--loss", "cdpo", "--label-smoothing", 0.1, "--lora-r", 4,
            "--batch-size", 6, "--max-length", 64)
    assert r.exit_code == 0, r.output
    assert "12 pairs from" in r.output and (workspace.root / "runs" / "dpo-2" / "model" / "config.json").is_file()


def test_cli_errors_print_one_line(cli, tmp_path):
    r = cli()
    assert r.exit_code == 1 and "no preference pairs in this workspace" in r.output and "Traceback" not in r.output
    r = cli("--loss", "kto")
    assert r.exit_code == 1 and "unknown loss 'kto'" in r.output
    r = cli("--labelers", "ignore")
    assert r.exit_code == 1 and "--labelers" in r.output
    r = cli("--data", tmp_path / "missing.jsonl")
    assert r.exit_code == 1 and "file not found" in r.output
