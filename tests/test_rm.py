"""Reward models (tether.reward) and the reward-model recipe (tether.recipes.rm), on the tiny model."""

import dataclasses
import json
import math
import random

import pytest
import torch

from tether import reward
from tether.algos.losses import bradley_terry_loss
from tether.errors import TetherError
from tether.models import LoraSettings
from tether.recipes import rm

MSGS = [{"role": "user", "content": "Name a colour."}]
PROMPTS = ["Name a colour.", "What colour do you like?", "Pick a colour for the wall.", "Describe the sky."]
FILLER = ["the", "a", "my", "nice", "deep", "light", "old", "new", "car", "sea", "door", "shirt", "is", "very"]


def colour_pairs(n: int, seed: int = 0) -> list[rm.PreferenceExample]:
    """Chosen answers say "blue", rejected ones say "red"; everything else is shared filler."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = rng.sample(FILLER, 4)
        at = rng.randrange(5)
        prompt = [{"role": "user", "content": rng.choice(PROMPTS)}]
        pairs.append(rm.PreferenceExample(prompt, " ".join(words[:at] + ["blue"] + words[at:]),
                                          " ".join(words[:at] + ["red"] + words[at:])))
    return pairs


def cfg_for(tiny_model_dir, tmp_path, **kw) -> rm.RMConfig:
    base = dict(model=str(tiny_model_dir), lr=3e-3, epochs=4, batch_size=8, max_length=64, warmup=0.0,
                log_every=2, checkpoint_every=None, out_dir=str(tmp_path / "rm"), seed=0, by_prompt=False)
    return rm.RMConfig(**(base | kw))


# --- encoding -------------------------------------------------------------------------------------

def test_encode_pair_text_finished_vs_unfinished(bundled_tokenizer):
    tok = bundled_tokenizer
    done = reward.encode_pair_text(tok, MSGS, "Blue, like the sea", finished=True)
    cut = reward.encode_pair_text(tok, MSGS, "Blue, like the sea", finished=False)
    full = tok.apply_chat_template(MSGS + [{"role": "assistant", "content": "Blue, like the sea"}], tokenize=False)
    assert tok.decode(done) == full  # the model's own template, once
    assert tok.decode(done).endswith("Blue, like the sea<|im_end|>\n")
    assert tok.decode(cut).endswith("<|im_start|>assistant\nBlue, like the sea")  # looks cut off
    assert tok.convert_tokens_to_ids("<|im_end|>") not in cut[len(models_prompt(tok)):]
    assert done[:len(cut)] == cut and len(done) > len(cut)  # same tokens, only the end-of-turn differs
    for ids in (done, cut):  # BOS once
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    plain_done = reward.encode_pair_text(tok, "Once upon a time", " there was", finished=True)
    plain_cut = reward.encode_pair_text(tok, "Once upon a time", " there was", finished=False)
    assert plain_done == plain_cut + [tok.eos_token_id] and plain_cut[-1] != tok.eos_token_id


def models_prompt(tok):
    from tether.models import encode_prompt

    return encode_prompt(tok, MSGS)


def test_encode_pair_text_truncates_the_prompt_from_the_left(bundled_tokenizer):
    tok = bundled_tokenizer
    full = reward.encode_pair_text(tok, MSGS, "Blue, like the sea", finished=True)
    short = reward.encode_pair_text(tok, MSGS, "Blue, like the sea", finished=True, max_length=12)
    assert len(short) == 12 and short[0] == tok.bos_token_id  # BOS kept
    assert short[1:] == full[-11:]  # the end of the response survives
    assert reward.encode_pair_text(tok, MSGS, "x", max_length=len(full)) == reward.encode_pair_text(tok, MSGS, "x")


# --- forward ----------------------------------------------------------------------------------------

ITEMS = [(MSGS, "Blue", True), (MSGS, "Red, like a fire truck on a", False),
         ("Once upon a time", " there was a blue sea", False), (MSGS, "Green is the colour of grass", True)]


def test_reward_forward_matches_hf_pooling_and_ignores_padding_side(tiny_model_dir):
    model, tok = reward.load_reward_model(str(tiny_model_dir), num_heads=2)
    rows = [reward.encode_pair_text(tok, *item) for item in ITEMS]
    assert all(r[-1] != tok.pad_token_id for r in rows)  # where HF's pad-based pooling is right
    ids, mask = reward.pad_batch(rows, tok.pad_token_id)  # right padding
    with torch.no_grad():
        ours = reward.reward_forward(model, ids, mask)  # (4, 2)
        hf = model(input_ids=ids, attention_mask=mask).logits  # (4, 2)
        width = ids.shape[1]
        left_ids = torch.stack([torch.cat([torch.full((width - len(r),), tok.pad_token_id), torch.tensor(r)])
                                for r in rows])
        left_mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]).long() for r in rows])
        left = reward.reward_forward(model, left_ids, left_mask)
        alone = torch.cat([reward.reward_forward(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
                           for r in rows])
    assert ours.shape == (4, 2)
    torch.testing.assert_close(ours, hf, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, ours, atol=1e-5, rtol=1e-4)
    # and score_texts (sorted by length, batched) gives the same rewards in input order
    torch.testing.assert_close(reward.score_texts(model, tok, ITEMS, batch_size=3), ours, atol=1e-5, rtol=1e-4)


def test_fresh_head_is_initialised_small(tiny_model_dir):
    torch.manual_seed(0)
    model, _ = reward.load_reward_model(str(tiny_model_dir), num_heads=16)  # 32 x 16 weights
    assert model.score.weight.std().item() == pytest.approx(1 / math.sqrt(32 + 1), rel=0.15)
    assert model.config.pad_token_id is not None


def test_ensemble_stats_by_hand():
    mean, std = reward.ensemble_stats(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    torch.testing.assert_close(mean, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 0.0]))  # population std over heads


# --- pure helpers -----------------------------------------------------------------------------------

def test_weighted_bt_loss_by_hand():
    """c = (1, 0), r = (0, 0), w = (2, 0): losses -log σ(1) = 0.31326, -log σ(0) = 0.69315;
    loss = (2 · 0.31326 + 0 · 0.69315) / 2 = 0.31326; accuracy = 1/2 (a tie is not a win)."""
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    loss, acc = rm.weighted_bt_loss(c, r, torch.tensor([2.0, 0.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert acc.item() == 0.5
    # margin (1, 0): both differences become 0 -> log 2 each
    loss, _ = rm.weighted_bt_loss(c, r, margin=torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # unit weights = the library's bradley_terry_loss, with and without margin
    c, r, m = torch.randn(7), torch.randn(7), torch.rand(7)
    for margin in (None, m):
        ours, our_acc = rm.weighted_bt_loss(c, r, torch.ones(7), margin)
        ref, ref_acc = bradley_terry_loss(c, r, margin)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(our_acc, ref_acc)
    # two heads, per-head weights: head 0 counts pair 0 twice, head 1 only pair 1
    c2, r2 = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 2)
    w2 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    loss, acc = rm.weighted_bt_loss(c2, r2, w2)
    sp = lambda x: math.log(1 + math.exp(-x))  # noqa: E731  -log σ(x)
    assert loss.item() == pytest.approx((2 * sp(2.0) + sp(1.0)) / 4, abs=1e-6)
    assert acc.item() == 1.0  # mean heads: 1 > 0 and 0.5 > 0


def test_expected_calibration_error_by_hand():
    """bins of width 0.1: {0.05 | label 0} -> |0 - 0.05|, {0.15 | 1} -> |1 - 0.15|, {0.95, 0.95 | 1, 0} -> |0.5 - 0.95|;
    ECE = 1/4 · 0.05 + 1/4 · 0.85 + 2/4 · 0.45 = 0.45."""
    ece = rm.expected_calibration_error(torch.tensor([0.05, 0.15, 0.95, 0.95]), torch.tensor([0, 1, 1, 0]))
    assert ece == pytest.approx(0.45, abs=1e-6)
    assert rm.expected_calibration_error(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1, 1, 0])) == pytest.approx(0.0)
    assert rm.expected_calibration_error(torch.tensor([0.3, 0.3]), torch.tensor([1, 0]), bins=2) == pytest.approx(0.2)


def ranking_pairs_of(prompts: int, k: int = 4) -> list[rm.PreferenceExample]:
    """All k-choose-2 pairs of k answers per prompt, twice (as two labelers' answers would give):
    answer j says "blue" j times, more blue is better."""
    pairs = []
    for q in range(prompts):
        prompt = [{"role": "user", "content": f"{PROMPTS[q % len(PROMPTS)]} ({q})"}]
        answers = [" ".join(["blue"] * j + ["red"] * (k - j)) for j in range(k)]
        for _ in range(2):
            pairs += [rm.PreferenceExample(prompt, answers[j], answers[i]) for i in range(k) for j in range(i + 1, k)]
    return pairs


def test_by_prompt_forwards_each_response_once_with_the_same_loss(tiny_model_dir, tmp_path):
    """by_prompt: a micro-batch holds one prompt's 12 pairs and forwards its 4 answers once (not 24 rows),
    and the loss it logs is the Bradley-Terry loss of those 12 pairs scored one by one."""
    from accelerate.utils import set_seed

    pairs = ranking_pairs_of(3)
    cfg = cfg_for(tiny_model_dir, tmp_path, by_prompt=True, epochs=1, batch_size=12, log_every=1, eval_fraction=0,
                  lr=1e-12, bucket=False)
    set_seed(cfg.seed)  # the head that train() will initialise, to score the pairs one by one
    fresh, tok = reward.load_reward_model(cfg.model, num_heads=1)
    rows = []
    backbone = None

    def count(module, args, kwargs):
        if torch.is_grad_enabled():
            rows.append(kwargs.get("input_ids", args[0] if args else None).shape[0])

    import tether.reward as R
    real = R.load_reward_model

    def spy(*a, **kw):
        nonlocal backbone
        model, t = real(*a, **kw)
        backbone = model.model
        backbone.register_forward_pre_hook(count, with_kwargs=True)
        return model, t

    R.load_reward_model = spy
    try:
        result = rm.train(cfg, pairs, show_progress=False)
    finally:
        R.load_reward_model = real
    assert result.steps == 3 and rows == [4, 4, 4]  # one prompt (12 pairs, 4 answers) per step
    first = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()][0]
    prompts = {json.dumps(p.prompt) for p in pairs}
    with torch.no_grad():
        per_prompt = []
        for q in prompts:  # the logged loss is the mean over the step's pairs, one prompt per step
            mine = [p for p in pairs if json.dumps(p.prompt) == q]
            c = reward.score_texts(fresh.train(), tok, [(p.prompt, p.chosen, True) for p in mine], normalise_scores=False)
            r = reward.score_texts(fresh, tok, [(p.prompt, p.rejected, True) for p in mine], normalise_scores=False)
            per_prompt.append(bradley_terry_loss(c[:, 0], r[:, 0])[0].item())
    assert any(abs(first["loss"] - x) < 1e-5 for x in per_prompt)


# --- training ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """Blue beats red: 64 pairs (16 held out), 4 epochs on the tiny model, normalised on 12 samples."""
    tmp = tmp_path_factory.mktemp("rm-train")
    normalise_on = [(MSGS, f"{w} blue" if i % 2 else f"{w} red", i % 3 != 0) for i, w in enumerate(FILLER[:12])]
    cfg = cfg_for(tiny_model_dir, tmp, eval_fraction=0.25)
    result = rm.train(cfg, colour_pairs(64), normalise_on=normalise_on, show_progress=False)
    return result, normalise_on


def test_training_learns_a_simple_preference(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    result, _ = trained
    m = result.metrics
    print({k: v for k, v in m.items() if k.startswith("eval_")})
    assert result.completed and result.steps == result.total_steps == 4 * 6  # 48 pairs -> 6 batches x 4 epochs
    assert m["eval_pairs"] == 16 and m["eval_accuracy"] >= 0.9
    assert m["eval_margin"] > 0 and 0 <= m["eval_ece"] <= 1 and 0 <= m["eval_brier"] < 0.25
    lines = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == list(range(2, 25, 2))
    assert all(math.isfinite(x["loss"]) and x["pairs_per_s"] > 0 for x in train_lines)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    assert json.loads((result.out_dir / "metrics.json").read_text())["eval_accuracy"] == m["eval_accuracy"]
    assert any((result.out_dir / "tb").iterdir())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = base.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(result.model.model.layers[0].self_attn.q_proj.weight, before)


def test_saved_model_loads_with_plain_transformers(trained):
    from transformers import AutoModelForSequenceClassification

    result, _ = trained
    plain = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    assert plain.config.tether_reward["heads"] == 1
    tok = result.tokenizer
    rows = [reward.encode_pair_text(tok, *item) for item in ITEMS]
    ids, mask = reward.pad_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits,
                                   reward.reward_forward(result.model, ids, mask), atol=1e-5, rtol=1e-4)
    again, _ = reward.load_reward_model(str(result.model_dir))  # the trained head is kept
    torch.testing.assert_close(again.score.weight, result.model.score.weight)
    torch.testing.assert_close(reward.score_texts(again, tok, ITEMS), reward.score_texts(result.model, tok, ITEMS))


def test_normalisation_over_the_policy_samples(trained):
    result, normalise_on = trained
    scores = reward.score_texts(result.model, result.tokenizer, normalise_on)  # (12, 1)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-4)
    raw = reward.score_texts(result.model, result.tokenizer, normalise_on, normalise_scores=False)
    assert raw.std().item() != pytest.approx(1.0, abs=1e-3)  # it really was rescaled


def test_ensemble_heads_disagree(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path, num_heads=3, epochs=1, eval_fraction=0.25, eval_every=1)
    result = rm.train(cfg, colour_pairs(32), show_progress=False)
    lines = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval_accuracy" in x] == [1, 2, 3]  # every step, and at the end
    scores = reward.score_texts(result.model, result.tokenizer, ITEMS)  # (4, 3)
    assert scores.shape == (4, 3)
    assert not torch.allclose(scores[:, 0], scores[:, 1]) and not torch.allclose(scores[:, 1], scores[:, 2])
    mean, std = reward.ensemble_stats(scores)
    assert mean.shape == std.shape == (4,) and torch.all(std > 0)
    assert result.metrics["eval_ensemble_std"] > 0 and len(result.metrics["eval_head_accuracy"]) == 3
    assert len(result.model.config.tether_reward["mean"]) == 3


def test_lora_trains_adapters_and_head_only_and_saves_merged(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model, _ = reward.load_reward_model(str(tiny_model_dir))
    peft_model = reward.add_reward_lora(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable)  # the fresh head trains too

    cfg = cfg_for(tiny_model_dir, tmp_path, lora=LoraSettings(r=4, alpha=8), epochs=1)
    result = rm.train(cfg, colour_pairs(32), show_progress=False)
    assert type(result.model).__name__ == "LlamaForSequenceClassification"  # merged, no peft wrapper
    plain = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert not any("lora" in k for k in plain.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q_proj = plain.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_proj, base.model.layers[0].self_attn.q_proj.weight)  # the adapter was merged in
    torch.testing.assert_close(plain.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not adapted
    torch.testing.assert_close(reward.score_texts(plain, result.tokenizer, ITEMS),
                               reward.score_texts(result.model, result.tokenizer, ITEMS), atol=1e-5, rtol=1e-4)


def test_train_layers_trains_the_top_layers_and_head_only(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, _ = reward.load_reward_model(str(tiny_model_dir))
    reward.freeze_below(model, 1)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] if n.startswith("model.") else n.split(".")[0]
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers", "model.norm", "score"}
    assert all(p.requires_grad == (n.startswith(("model.layers.1.", "model.norm", "score")))
               for n, p in model.named_parameters())
    with pytest.raises(TetherError, match="between 1 and"):
        reward.freeze_below(model, 3)
    result = rm.train(cfg_for(tiny_model_dir, tmp_path, train_layers=1, epochs=1), colour_pairs(32),
                      show_progress=False)
    start = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    done = result.model.state_dict()
    for name, value in start.state_dict().items():
        if name.startswith("model.layers.0.") or name.startswith("model.embed"):
            torch.testing.assert_close(done[name], value)  # frozen
    assert not torch.allclose(done["model.layers.1.mlp.up_proj.weight"], start.state_dict()["model.layers.1.mlp.up_proj.weight"])


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    pairs = colour_pairs(24)  # 20 train pairs -> 3 batches of 8 per epoch, 2 epochs = 6 steps
    settings = dict(epochs=2, eval_fraction=0.2, checkpoint_every=3, log_every=1)
    straight = rm.train(cfg_for(tiny_model_dir, tmp_path / "a", **settings), pairs, show_progress=False)
    assert straight.steps == 6

    cfg = cfg_for(tiny_model_dir, tmp_path / "b", **settings)
    crashed = rm.train(dataclasses.replace(cfg, stop_after=4), pairs, show_progress=False)
    assert not crashed.completed and crashed.steps == 4 and crashed.model_dir is None
    state = json.loads((tmp_path / "b" / "rm" / "checkpoint" / "tether_state.json").read_text())
    assert state["step"] == 3  # the last checkpoint; step 4 is lost with the crash

    with pytest.raises(TetherError, match="other data or settings"):
        rm.train(dataclasses.replace(cfg, lr=1e-2), pairs, resume=True, show_progress=False)
    resumed = rm.train(cfg, pairs, resume=True, show_progress=False)
    assert not (tmp_path / "b" / "rm" / "checkpoint").exists()  # a completed run drops its checkpoint
    assert resumed.completed and resumed.steps == resumed.total_steps == 6
    lines = [json.loads(x) for x in (tmp_path / "b" / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4, 5, 6]  # the lost step 4 is not doubled
    assert all(math.isfinite(x["loss"]) for x in lines if "loss" in x)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert resumed.metrics["eval_accuracy"] == pytest.approx(straight.metrics["eval_accuracy"])


def test_ratings_add_a_regression_term(tiny_model_dir, tmp_path):
    ratings = [rm.RatingExample(MSGS, f"{w} blue", True, 1.0) for w in FILLER[:4]] + \
              [rm.RatingExample(MSGS, f"{w} red", True, -1.0) for w in FILLER[:4]]
    cfg = cfg_for(tiny_model_dir, tmp_path, epochs=2, regression_weight=0.5, eval_fraction=0.0)
    result = rm.train(cfg, colour_pairs(16), ratings=ratings, show_progress=False)
    lines = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["mse"]) for x in lines if "loss" in x)
    assert result.metrics["train_pairs"] == 16 and "eval_accuracy" not in result.metrics


def test_ratings_alone_train_a_regression(tiny_model_dir, tmp_path):
    """No pairs at all: the mean head regresses the normalised ratings ("blue" answers rated +1, "red"
    ones -1); held-out ratings are ranked the right way round and the MSE falls below the untrained one."""
    rng = random.Random(1)
    ratings = []
    for i in range(48):
        words = rng.sample(FILLER, 3)
        colour, target = ("blue", 1.0) if i % 2 else ("red", -1.0)
        ratings.append(rm.RatingExample(MSGS, " ".join(words[:1] + [colour] + words[1:]), True, target))
    cfg = cfg_for(tiny_model_dir, tmp_path, epochs=10, eval_fraction=0.25)
    result = rm.train(cfg, [], ratings=ratings, show_progress=False)
    m = result.metrics
    assert m["train_pairs"] == 0 and m["train_ratings"] == 36 and m["eval_ratings"] == 12
    assert m["eval_spearman"] > 0.6 and m["eval_mse"] < 0.5, m  # an untrained head predicts ~0: MSE ~1
    lines = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert all("accuracy" not in x and x["loss"] == x["mse"] for x in train)
    assert train[-1]["mse"] < train[0]["mse"]


def test_cli_rm_on_ratings_alone(workspace, tmp_path):
    """`tether rm` on a workspace whose only feedback is one rating per prompt (so no pairs)."""
    from typer.testing import CliRunner

    from tether.cli import app
    from tether.data import feedback as F
    from tether.data import schema as S

    store = workspace.store()
    with store.session() as s:
        ann, bob = store.labeler(s, "ann"), store.labeler(s, "bob")
        for i in range(12):
            p, _ = store.get_or_add_prompt(s, f"Question {i}?", [{"role": "user", "content": f"Question {i}?"}])
            r = S.Response(prompt_id=p.id, text=f"answer {i} " + ("blue" if i % 2 else "red"), policy="pi")
            s.add(r)
            s.flush()
            F.record_rating(s, ann if i % 3 else bob, r.id, 5 if i % 2 else 1)
    result = CliRunner().invoke(app, ["rm", "--epochs", "1", "--train-layers", "1", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "no preference pairs: a regression on 12 normalised ratings" in out and "held-out ratings: MSE" in out


def test_no_pairs_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(TetherError, match="no preference pairs or ratings"):
        rm.train(cfg_for(tiny_model_dir, tmp_path), [], show_progress=False)


def test_bfloat16_autocast_runs(tiny_model_dir, tmp_path):
    from accelerate.state import AcceleratorState

    try:
        cfg = cfg_for(tiny_model_dir, tmp_path, dtype="bfloat16", epochs=1, eval_fraction=0.0)
        result = rm.train(cfg, colour_pairs(16), show_progress=False)
    finally:  # leave no bf16 accelerator state behind for other tests in this process
        AcceleratorState._reset_state(reset_partial_state=True)
    lines = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 2 and all(math.isfinite(x["loss"]) for x in lines if "loss" in x)
    assert next(result.model.parameters()).dtype == torch.float32  # autocast only; weights stay fp32


def test_length_bucketing_pads_less_and_keeps_groups():
    """64 pairs of random lengths, groups of 3 at the start: bucketed batches compute fewer padded
    tokens (sum over batches of size x longest) than plain shuffled ones, cover every pair once,
    and never split a group."""
    lengths = [random.Random(i).randint(10, 200) for i in range(64)]
    groups = [i // 3 if i < 12 else None for i in range(64)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = rm.batches_keeping_groups(groups, 8, random.Random(0))
    bucketed = rm.batches_keeping_groups(groups, 8, random.Random(0), lengths)
    assert sorted(i for b in bucketed for i in b) == list(range(64))
    for g in range(4):
        assert sum(any(groups[i] == g for i in b) for b in bucketed) == 1
    assert padded(bucketed) < 0.8 * padded(plain)
