"""Generation with states: the log-probs and hidden states read off KV-cached decoding equal those of
one full forward pass over prompt‖response (what PPO would otherwise recompute)."""

import pytest
import torch

from tether.rollout import generate, pack, response_logits


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_states_from_decoding_match_a_full_forward(word_model_dir, temperature):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(word_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(word_model_dir)
    prompts = [(i, tok(p).input_ids) for i, p in enumerate(["say a color", "the sky is", "a dog is", "sea"])]
    gens = next(generate(model, tok, prompts, temperature=temperature, max_new_tokens=6, batch_size=4, seed=3,
                         with_states=True))
    by_key = dict(prompts)
    responses = [g.token_ids + ([g.stop_token] if g.finished else []) for g in gens]
    ids, attn, mask = pack([by_key[g.key] for g in gens], responses, tok.pad_token_id)
    width = ids.shape[1] - mask.shape[1]
    with torch.no_grad():
        logits, hidden = response_logits(model, ids, attn, width)  # (B, T, V), (B, T, D)
    labels = ids[:, width:]
    lp_t = (logits / temperature).log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    lp_raw = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    for row, g in enumerate(gens):
        n = g.num_tokens
        assert g.logprobs.shape == (n,) and g.hidden.shape == (n, hidden.shape[-1])
        torch.testing.assert_close(g.logprobs, lp_t[row, :n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g.logprobs_raw, lp_raw[row, :n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g.hidden, hidden[row, :n], atol=1e-4, rtol=1e-4)


def test_states_refuse_nucleus_sampling(word_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(word_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(word_model_dir)
    with pytest.raises(ValueError, match="top_p = 1"):
        next(generate(model, tok, [(0, [3])], top_p=0.9, with_states=True))


def test_sampler_draws_from_the_tempered_softmax():
    from tether.rollout import Sampler

    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf"), -1.0]])  # (1, V): token 3 has probability 0
    gen = torch.Generator().manual_seed(0)
    sampler = Sampler(gen, temperature=0.5, top_p=1.0)
    n = 20000
    draws = torch.stack([sampler(None, logits).argmax(-1) for _ in range(n)]).flatten()  # greedy picks the draw
    freq = torch.bincount(draws, minlength=5).double() / n
    want = (logits / 0.5).softmax(-1).double()[0]  # e^4, e^2, e^0, 0, e^-2 over their sum: .867, .117, .016, 0, .002
    assert freq[3] == 0
    assert torch.allclose(freq, want, atol=0.01), (freq, want)


def test_sampler_respects_top_p_and_per_row_streams():
    from tether.rollout import Sampler

    logits = torch.tensor([[3.0, 2.9, -5.0, -5.0]]).repeat(2, 1)  # (2, V): the top two hold > 99.9 %
    picks = set()
    for s in range(300):
        out = Sampler([torch.Generator().manual_seed(s), torch.Generator().manual_seed(s)], 1.0, top_p=0.9)(None, logits)
        assert out.argmax(-1)[0] == out.argmax(-1)[1]  # same seed, same draw, whatever the row
        assert torch.isinf(out).sum() == 2 * 3  # exactly one finite score per row
        picks.add(int(out.argmax(-1)[0]))
    assert picks == {0, 1}  # top-p 0.9 keeps both leading tokens and nothing else


def test_sampling_copy_follows_the_trained_weights(word_model_dir):
    from transformers import AutoModelForCausalLM

    from tether.models import LoraSettings, add_lora
    from tether.rollout import SamplingCopy

    model = AutoModelForCausalLM.from_pretrained(word_model_dir)
    sc = SamplingCopy()
    copy = sc.sync(model)
    assert copy is not model and all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert copy.get_input_embeddings().weight is copy.get_output_embeddings().weight  # still tied
    assert all(b.dtype == torch.float32 for b in copy.buffers() if b.is_floating_point())  # rotary stays fp32
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # a "training step"
    assert sc.sync(model) is copy  # refreshed in place
    torch.testing.assert_close(copy.get_input_embeddings().weight.float(), model.get_input_embeddings().weight,
                               atol=0.02, rtol=0.01)  # bf16 rounding
    sc.release()  # between rollouts the copy holds no weights ...
    assert all(p.numel() == 0 for p in copy.parameters())
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)
    assert sc.sync(model) is copy  # ... and the next sync casts them afresh, still tied, in bf16
    assert all(p.dtype == torch.bfloat16 and p.shape == q.shape for p, q in zip(copy.parameters(), model.parameters()))
    assert copy.get_input_embeddings().weight is copy.get_output_embeddings().weight
    torch.testing.assert_close(copy.get_input_embeddings().weight.float(), model.get_input_embeddings().weight,
                               atol=0.02, rtol=0.01)
    peft = add_lora(AutoModelForCausalLM.from_pretrained(word_model_dir), LoraSettings(r=2, alpha=4))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)  # adapters that change the output
    merged = SamplingCopy().sync(peft)
    assert not hasattr(merged, "peft_config") and all(p.dtype == torch.bfloat16 for p in merged.parameters())
    x = torch.tensor([[2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits.float(), peft(x).logits, atol=0.05, rtol=0.05)
        with peft.disable_adapter():
            base = peft(x).logits
        assert not torch.allclose(merged(x).logits.float(), base, atol=0.05)  # the adapters are merged in
    assert any("lora_" in n for n, _ in peft.named_parameters())  # the trained model keeps its adapters


def test_frozen_bf16_stores_linear_weights_in_bf16_with_autocast_results_unchanged(tiny_model_dir):
    """Reference and reward models under bf16: linear weights stored in bf16, embeddings (tied head) and
    norms float32; under autocast the log-probs and rewards are bit for bit those of float32 weights."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tether.recipes.common import frozen

    cpu = torch.device("cpu")
    x = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]])
    a = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    for cls in (AutoModelForCausalLM, AutoModelForSequenceClassification):
        kw = {"num_labels": 2} if cls is AutoModelForSequenceClassification else {}
        torch.manual_seed(0)
        full = cls.from_pretrained(tiny_model_dir, **kw)
        with torch.no_grad():  # a head bias, to check biases too
            for m in full.modules():
                if isinstance(m, torch.nn.Linear) and m.bias is not None:
                    m.bias.normal_()
        small = frozen(cls.from_pretrained(tiny_model_dir, **kw), cpu, "bfloat16")
        small.load_state_dict(full.state_dict())  # same weights (copied in, keeping the stored dtypes)
        assert not any(p.requires_grad for p in small.parameters())
        linears = [m for m in small.modules() if isinstance(m, torch.nn.Linear)]
        head = small.get_output_embeddings() if cls is AutoModelForCausalLM else None
        assert all(m.weight.dtype == torch.bfloat16 for m in linears if m is not head)
        assert small.get_input_embeddings().weight.dtype == torch.float32
        if head is not None:
            assert head.weight is small.get_input_embeddings().weight  # still tied, float32
        assert all(p.dtype == torch.float32 for n, p in small.named_parameters() if "norm" in n)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            expected, got = full(input_ids=x, attention_mask=a).logits, small(input_ids=x, attention_mask=a).logits
        assert torch.equal(expected, got)
        assert frozen(full, cpu, "float32") is full and full.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_head_logprobs_fused_equals_full_logits(word_model_dir, entropy_grad):
    """PPO's training forward: log-probs (logits / temperature) and entropy from the chunked head equal
    those from the full (B, T, V) logits, and so do the gradients of a loss on them. entropy_grad=True
    takes the full-logits path itself (an entropy bonus needs the entropy's gradient); `raw` adds the
    log-probs under the raw logits (the old log-probs GRPO defers to its training forward)."""
    from transformers import AutoModelForCausalLM

    from tether.algos.losses import entropy_from_logits, logprobs_from_logits
    from tether.rollout import head_logprobs, plain_head, response_hidden

    model = AutoModelForCausalLM.from_pretrained(word_model_dir).eval()
    assert plain_head(model) is not None
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 9))
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # a left-padded prompt
    width, targets = 4, ids[:, 4:]
    weights = torch.randn(targets.shape)
    raws = []

    def run(fused: bool):
        model.zero_grad()
        hidden = response_hidden(model, ids, attn, width)  # (B, T, D)
        if fused:
            lp, ent, raw = head_logprobs(model, hidden, targets, temperature=0.7, entropy_grad=entropy_grad, raw=True)
            raws.append(raw)
        else:
            logits = model.get_output_embeddings()(hidden).float() / 0.7
            lp, ent = logprobs_from_logits(logits, targets), entropy_from_logits(logits)
        ((lp * weights).sum() + (0.1 * ent.sum() if entropy_grad else 0)).backward()
        return lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    lp, ent, grads = run(True)
    lp_full, ent_full, grads_full = run(False)
    torch.testing.assert_close(lp, lp_full, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # raw=True: the log-probs under the raw logits (temperature 1), no gradient
        logits = model.get_output_embeddings()(response_hidden(model, ids, attn, width)).float()
    assert not raws[0].requires_grad
    torch.testing.assert_close(raws[0], logprobs_from_logits(logits, targets), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_full, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(grads_full) > 0
    for a, b in zip(grads, grads_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
