"""Batched generation with the KV cache and left padding (HF `generate`; vLLM in `rollout_vllm.py`),
and the packed prompt‖response layout that RL recipes and evaluation score token by token.

Sequences are sorted by prompt length so a batch pads little; each batch is seeded so a run can be
reproduced, or, with `seeds`, each sequence has its own seed, so its sample does not depend on which
batch or process it shares (what lets RL runs on 1 and on N processes draw the same samples). A response that hits `max_new_tokens` without EOS is marked unfinished, and its text is
exactly what was generated: nothing marks it as finished (a reward model must be able to see the cut).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper


@dataclass
class Generation:
    key: object  # the caller's identifier for the prompt
    text: str  # decoded response, special tokens removed, no EOS
    token_ids: list[int]  # generated tokens, EOS excluded
    num_tokens: int  # tokens generated, EOS included
    finished: bool  # ended with EOS (False: cut off at max_new_tokens)
    seed: int
    stop_token: int | None = None  # the EOS token that ended it (None when cut off)
    # with_states=True only: per generated token, EOS included (n = num_tokens)
    logprobs: torch.Tensor | None = None  # (n,) log-prob under logits / temperature (the sampling distribution)
    logprobs_raw: torch.Tensor | None = None  # (n,) log-prob under the raw logits
    hidden: torch.Tensor | None = None  # (n, D) final hidden state that predicted each token


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index) % (2**31 - 1)


class Sampler(LogitsProcessor):
    """Draws each row's next token from softmax(z / T) (after top-p) by inverse transform sampling: with
    one uniform u per row, the token is the first v whose cumulative probability exceeds u (Devroye 1986,
    ch. 2). Returns scores that are 0 at the drawn token and -inf elsewhere, so greedy decoding emits it.

    One uniform per row instead of one random number per vocabulary entry (HF's `multinomial` and the
    Gumbel-max trick both draw V of them): on a 49k vocabulary that was ~11 ms of a ~90 ms CPU decoding
    step. `gens`: one generator per row (each sequence its own stream, whatever batch it shares) or a
    single generator for the whole batch."""

    def __init__(self, gens: list[torch.Generator] | torch.Generator, temperature: float, top_p: float):
        self.gens, self.temperature = gens, temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature  # (B, V)
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        cdf = scores.softmax(-1).double().cumsum(-1)  # (B, V), float64 so 49k small terms add up exactly enough
        B, device = scores.shape[0], scores.device
        if isinstance(self.gens, torch.Generator):
            u = torch.rand(B, 1, generator=self.gens, dtype=torch.float64, device=device)  # (B, 1)
        else:
            u = torch.stack([torch.rand(1, generator=g, dtype=torch.float64, device=device) for g in self.gens])
        # right side: the first v with cdf_v > u * total, so a token of probability 0 is never drawn
        token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(scores.shape[1] - 1)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


class SamplingCopy:
    """A bfloat16 copy of the policy that only samples, for RL recipes that train under CPU bf16 autocast.

    Decoding under autocast recasts every float32 weight to bf16 at every step: measured on the bundled
    model (AMX Xeon, 2 threads), 147 ms a step for 16 sequences, against 92 ms with bf16 weights. `sync` refreshes the copy from the trained weights before each rollout
    (one cast copy of the parameters, ~0.1 s for 135M); with LoRA the copy is the merged model, rebuilt
    each time. Only parameters are cast: buffers such as rotary frequencies stay float32. The samples
    come from the same bf16-rounded policy that autocast training computes with.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        self.dtype, self.model = dtype, None

    @torch.no_grad()
    def sync(self, model):
        """The copy, with `model`'s current weights."""
        lora = hasattr(model, "merge_and_unload")
        if self.model is None or lora:
            self.model = None  # free the old copy first
            clone = copy.deepcopy(model)
            clone = clone.merge_and_unload() if lora else clone
            try:  # a policy trained with eager attention decodes faster with sdpa (98 against 122 ms a step)
                clone.set_attn_implementation("sdpa")
            except (ValueError, ImportError):  # an architecture without sdpa keeps its own
                pass
            for p in clone.parameters():  # tied weights are one Parameter: cast once, stay tied
                p.data = p.data.to(self.dtype)
            # HF hands the output layer a strided slice of the prefill (the last position); torch 2.13 runs a
            # bf16 linear on a non-contiguous 3-D input as a bmm over a batch-expanded weight copy: 1.9 s
            # instead of 7 ms for 16 rows of the bundled model's 49k-word head
            clone.get_output_embeddings().register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
            self.model = clone.eval().requires_grad_(False)
        else:
            for dst, src in zip(self.model.parameters(), model.parameters()):
                if dst.numel() == src.numel():
                    dst.copy_(src)
                else:  # released: cast afresh
                    dst.data = src.detach().to(self.dtype)
        return self.model

    def release(self) -> None:
        """Free the copy's weights between rollouts (the next `sync` casts them afresh): the training step,
        where a recipe's memory peaks, then runs without them."""
        if self.model is not None:
            for p in self.model.parameters():
                p.data = p.data.new_empty(0)


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[tuple[object, list[int]]], *, temperature: float = 0.7,
             top_p: float = 1.0, max_new_tokens: int = 96, batch_size: int = 16,
             seed: int = 0, with_states: bool = False, seeds: list[int] | None = None) -> Iterator[list[Generation]]:
    """Generate one response per (key, prompt token ids), yielding a list per batch.

    Repeat a prompt K times in `prompts` for K samples. Yielding per batch lets the caller store
    results as they come, so an interrupted run keeps what it finished. `with_states=True` also
    returns each token's log-probs and the final hidden state that predicted it, read off the
    KV-cached decoding itself, so an RL recipe needs no second policy forward pass for them
    (top_p must be 1 then: the log-probs are those of softmax(logits / temperature)). `seeds`: one
    per prompt; each sequence is then sampled from its own stream (`Sampler`), whatever the batch.
    """
    if with_states and (top_p < 1.0 or temperature <= 0):
        raise ValueError("with_states needs plain sampling: temperature > 0 and top_p = 1")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = eos_ids(model, tokenizer)
    gen_cfg = GenerationConfig(do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                               top_p=top_p if temperature > 0 else None, top_k=None,
                               max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=sorted(stop),
                               use_cache=True)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i][1]))
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i][1]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (B, T) left-padded
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = prompts[i][1]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        s = batch_seed(seed, b)
        torch.manual_seed(s)
        extra = {}
        if temperature > 0:  # sampled by `Sampler` under greedy decoding
            gens = ([torch.Generator(device=device).manual_seed(seeds[i]) for i in idx] if seeds is not None
                    else torch.Generator(device=device).manual_seed(s))
            extra = dict(logits_processor=LogitsProcessorList([Sampler(gens, temperature, top_p)]),
                         generation_config=GenerationConfig(**{**gen_cfg.to_diff_dict(), "do_sample": False,
                                                               "temperature": None, "top_p": None}))
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             **({"generation_config": gen_cfg} | extra), return_dict_in_generate=with_states,
                             output_logits=with_states, output_hidden_states=with_states)
        seqs = out.sequences if with_states else out
        new = seqs[:, width:].tolist()  # (B, <= max_new_tokens)
        if with_states:
            steps = seqs.shape[1] - width
            z = torch.stack(out.logits[:steps], 1).float()  # (B, S, V) raw logits of each step
            y = seqs[:, width:].unsqueeze(-1)  # (B, S, 1)
            lp_t = (z / temperature).log_softmax(-1).gather(-1, y).squeeze(-1).cpu()  # (B, S)
            lp_raw = z.log_softmax(-1).gather(-1, y).squeeze(-1).cpu()  # (B, S)
            del z
            hidden = torch.cat([out.hidden_states[0][-1][:, -1:]] +  # the prompt's last position predicts token 0
                               [h[-1][:, -1:] for h in out.hidden_states[1:steps]], 1).float().cpu()  # (B, S, D)
        batch = []
        for row, i in enumerate(idx):
            toks = new[row]
            end = next((j for j, t in enumerate(toks) if t in stop), None)
            kept = toks if end is None else toks[:end]
            n = len(kept) + (end is not None)
            states = dict(logprobs=lp_t[row, :n], logprobs_raw=lp_raw[row, :n], hidden=hidden[row, :n]) \
                if with_states else {}
            batch.append(Generation(key=prompts[i][0], text=tokenizer.decode(kept, skip_special_tokens=True),
                                    token_ids=kept, num_tokens=n, finished=end is not None,
                                    seed=s if seeds is None else seeds[i],
                                    stop_token=None if end is None else toks[end], **states))
        yield batch


def response_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """The final hidden states (B, T, D) that predict the response tokens at columns width.. (column
    t - 1 predicts token t). Position ids come from the attention mask, so left-padded prompts shift
    nothing."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft -> HF model
    backbone = getattr(inner, inner.base_model_prefix)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, P + T)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                      use_cache=False).last_hidden_state  # (B, P + T, D)
    return hidden[:, width - 1:-1].contiguous()  # (B, T, D); a strided slice makes torch's linear
    # broadcast the (V, D) head over the batch (a copy per row): 30 % slower in float32, ~10x in bfloat16


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int):
    """Logits (B, T, V) for the response tokens at columns width.. and the hidden states (B, T, D) that
    predict them. The output layer runs on response positions only."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = response_hidden(model, input_ids, attention_mask, width)
    return inner.get_output_embeddings()(hidden), hidden


# config fields by which a model scales or caps its logits after the output layer
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


def plain_head(model) -> torch.Tensor | None:
    """The output layer's weight (V, D) when logits are exactly hidden @ weight.T (a linear layer without
    bias, no scaling or capping after it), else None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head, cfg = inner.get_output_embeddings(), inner.config.get_text_config()
    if type(head) is torch.nn.Linear and head.bias is None and all(getattr(cfg, k, None) is None
                                                                    for k in LOGIT_TRANSFORMS):
        return head.weight
    return None


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  entropy_grad: bool = False, raw: bool = False):
    """(log-probs of `targets` (B, T) under logits / temperature, float32 with gradient; entropy of
    that distribution (B, T), float32; with `raw`, the targets' log-probs under the raw logits (B, T),
    without gradient, else None) from the hidden states (B, T, D) that predict the targets.

    With a plain linear head the (B, T, V) logits never exist whole (`logprobs_from_hidden`, chunks
    recomputed in backward; (h / temperature) W^T = (h W^T) / temperature), and the entropy, for
    logging, comes from the same chunks without gradient. Other heads, or `entropy_grad` (an entropy bonus), go through the
    full logits."""
    from tether.algos.losses import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits

    weight = plain_head(model)
    if weight is not None and not entropy_grad:
        h = (hidden / temperature).flatten(0, 1)  # (B * T, D)
        lp, ent = logprobs_from_hidden(h, weight, targets.flatten(), with_entropy=True)  # (B * T,) each
        lp, ent = lp.view(targets.shape), ent.view(targets.shape)  # (B, T)
        raw_lp = None
        if raw:
            with torch.no_grad():
                raw_lp = logprobs_from_hidden(hidden.detach().flatten(0, 1), weight.detach(),
                                              targets.flatten()).view(targets.shape)  # (B, T)
        return lp, ent, raw_lp
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = inner.get_output_embeddings()(hidden).float()  # (B, T, V)
    scaled = logits / temperature
    return (logprobs_from_logits(scaled, targets, ignore_index=None),
            entropy_from_logits(scaled if entropy_grad else scaled.detach()),
            logprobs_from_logits(logits.detach(), targets, ignore_index=None) if raw else None)


def pack(prompt_ids: list[list[int]], responses: list[list[int]], pad: int):
    """(input_ids (B, P + T), attention_mask (B, P + T), mask (B, T)): prompts left-padded to P,
    responses right-padded to T, so every response starts at column P."""
    P, T = max(map(len, prompt_ids)), max(1, max(map(len, responses)))
    input_ids = torch.full((len(prompt_ids), P + T), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    mask = torch.zeros((len(prompt_ids), T), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        input_ids[i, P - len(p):P], attention[i, P - len(p):P] = torch.tensor(p), 1
        input_ids[i, P:P + len(r)], attention[i, P:P + len(r)], mask[i, :len(r)] = torch.tensor(r, dtype=torch.long), 1, True
    return input_ids, attention, mask


def group_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int, k: int) -> torch.Tensor:
    """`response_hidden` (B, T, D) for rows in groups of k that share their prompt: each prompt runs once
    and its keys/values serve its k responses (gradients flow back through them), which saves (k-1)/k
    of the prompt's forward and backward. Equal to response_hidden up to float rounding."""
    if k == 1:
        return response_hidden(model, input_ids, attention_mask, width)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft -> HF model
    backbone = getattr(inner, inner.base_model_prefix)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, P + T)
    head = backbone(input_ids=input_ids[::k, :width], attention_mask=attention_mask[::k, :width],
                    position_ids=positions[::k, :width], use_cache=True)  # B / k prompts
    cache = head.past_key_values
    cache.batch_repeat_interleave(k)  # (B / k, ...) -> (B, ...), differentiable
    name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"  # renamed in 5.x
    hidden = backbone(input_ids=input_ids[:, width:], attention_mask=attention_mask, position_ids=positions[:, width:],
                      use_cache=True, **{name: cache}).last_hidden_state  # (B, T, D)
    first = head.last_hidden_state[:, -1:].repeat_interleave(k, 0)  # (B, 1, D) predicts response token 0
    return torch.cat([first, hidden[:, :-1]], 1)  # (B, T, D)


def group_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int, k: int) -> torch.Tensor:
    """`response_logits` (B, T, V) through `group_hidden` (each shared prompt computed once)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_output_embeddings()(group_hidden(model, input_ids, attention_mask, width, k))


class ResponseLogits(torch.nn.Module):
    """The policy behind one forward, so DDP/FSDP wrap the call that trains: response logits (B, T, V), or,
    given the response `targets` (B, T), `head_logprobs`' (log-probs under logits / temperature, entropy,
    raw log-probs or None), which never hold the (B, T, V) logits whole."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, width: int, k: int = 1, targets=None, temperature: float = 1.0,
                raw: bool = False):
        if targets is None:
            return group_logits(self.model, input_ids, attention_mask, width, k)
        hidden = group_hidden(self.model, input_ids, attention_mask, width, k)  # (B, T, D)
        return head_logprobs(self.model, hidden, targets, temperature, raw=raw)
