"""Reward models: plain transformers `...ForSequenceClassification` models that read query‖response.

A reward model is the policy's architecture with a linear `score` head of H outputs (H > 1: an
ensemble of heads over one shared backbone). It saves and loads as an ordinary HF folder; tether
adds one config key, `tether_reward = {"mean": [H floats], "std": [H floats], "heads": H}`, the
normalisation measured on the SFT policy's samples after training (Huang et al. 2022: rewards are
normalised to mean 0, std 1 there). :func:`score_texts` applies it; :func:`reward_forward` does not.

Pooling departs from transformers: HF reads the last token that is not `pad_token_id`, which is
wrong when the pad token is also the end-of-turn token (SmolLM2: pad == eos == <|im_end|>). Here the
score is read at the last *attended* position of each row, and positions come from the attention
mask, so left and right padding give the same rewards.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path

import torch

from tether import models
from tether.errors import TetherError

Prompt = str | list[dict]


def load_reward_model(name_or_path: str, num_heads: int | None = None, dtype: torch.dtype = torch.float32,
                      attn_implementation: str | None = None):
    """(model, tokenizer) for a reward model, in eval mode.

    `name_or_path`: 'bundled', a local HF folder or a hub id: a causal LM (a fresh head is added) or a
    reward model saved by :func:`save_reward_model` (its head and normalisation are kept).
    `num_heads`: ensemble size; None means the saved RM's count, or 1 for a fresh head. A fresh head
    is initialised N(0, 1/sqrt(d_model + 1)) (Huang et al. 2022; openai/lm-human-preferences).
    `attn_implementation`: transformers' attention kernel ("sdpa", "eager"); None: its default.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = models.resolve(name_or_path)
    tok = models.load_tokenizer(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise models._load_failure(name_or_path, e) from None
    saved = getattr(config, "tether_reward", None)
    if saved and num_heads is not None and num_heads != saved["heads"]:
        raise TetherError(f"'{name_or_path}' is a reward model with {saved['heads']} heads, not {num_heads}")
    heads = saved["heads"] if saved else (num_heads or 1)
    report = logging.getLogger("transformers.modeling_utils")  # its load report would call our new head missing
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=heads, dtype=dtype, output_loading_info=True,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}))
    except (OSError, ValueError) as e:
        raise models._load_failure(name_or_path, e) from None
    finally:
        report.setLevel(level)
    missing = [k for k in info["missing_keys"] if k.split(".")[0] != "score"]
    if missing:
        warnings.warn(f"reward model '{name_or_path}': weights missing from the checkpoint: {missing[:5]}",
                      stacklevel=2)
    head = _head(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    fresh_head = not saved and any(k.split(".")[0] == "score" for k in info["missing_keys"])
    if fresh_head:
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / (model.config.get_text_config().hidden_size + 1) ** 0.5)
            if head.bias is not None:
                head.bias.zero_()
    return model.eval(), tok


def _head(model) -> torch.nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft -> the HF model
    head = getattr(inner, "score", None)
    if head is None:
        raise TetherError(f"{type(inner).__name__} has no `score` head: reward models need a decoder "
                          "(AutoModelForSequenceClassification of a causal LM)")
    return head


def add_reward_lora(model, settings: models.LoraSettings | None = None):
    """LoRA adapters for a reward model (peft task SEQ_CLS): adapters and the `score` head train,
    everything else is frozen. (`models.add_lora` is for causal LMs and would freeze the head.)"""
    from peft import LoraConfig, get_peft_model

    s = settings or models.LoraSettings()
    cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules,
                     task_type="SEQ_CLS")
    return get_peft_model(model, cfg)


def freeze_below(model, train_layers: int) -> None:
    """Freeze everything but the top `train_layers` transformer layers, the final norm and the head.

    The backward pass then stops at the lowest trained layer, and the frozen layers keep no
    activations for it: a cheap reward model on a CPU (Ouyang et al. 2022 train all layers; with few
    comparisons the top layers carry most of what a reward model learns)."""
    backbone = getattr(model, model.base_model_prefix)
    layers = getattr(backbone, "layers", None)
    if layers is None or not 1 <= train_layers <= len(layers):
        have = "no `layers` list" if layers is None else f"{len(layers)} layers"
        raise TetherError(f"train_layers must be between 1 and the model's layer count ({have}), got {train_layers}")
    model.requires_grad_(False)
    for module in list(layers[len(layers) - train_layers:]) + [getattr(backbone, "norm", None), _head(model)]:
        if module is not None:
            module.requires_grad_(True)


def encode_pair_text(tokenizer, prompt: Prompt, response: str, finished: bool = True,
                     max_length: int | None = None) -> list[int]:
    """Token ids of query‖response as the reward model reads them.

    Chat prompt (list of {role, content}): finished -> the whole conversation through the chat
    template (prompt + assistant message, no generation prompt), so it ends with the end-of-turn
    token; unfinished (cut off at the length limit) -> the prompt with the generation prompt, then
    the response text and nothing after it, so a truncated answer looks cut off. The two share their
    prefix token for token. Plain-string prompt: prompt ids then response ids, plus EOS if finished.
    BOS appears once (see `models.encode_prompt`). Longer than `max_length`: tokens are dropped from
    the left, prompt first (the BOS is kept), because the end of the response carries the signal.
    """
    prompt_ids = models.encode_prompt(tokenizer, prompt)
    chat = not isinstance(prompt, str) and getattr(tokenizer, "chat_template", None)
    if chat and finished:
        opening = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": response}],
                                             tokenize=False)
        if full.startswith(opening):
            response_ids = tokenizer(full[len(opening):], add_special_tokens=False).input_ids
        else:  # a template that rewrites earlier turns: encode the whole text, BOS once
            response_ids = tokenizer(full, add_special_tokens=False).input_ids
            bos = tokenizer.bos_token_id
            prompt_ids = [bos] if prompt_ids[:1] == [bos] and response_ids[:1] != [bos] else []
    else:
        response_ids = tokenizer(response, add_special_tokens=False).input_ids
        if finished and tokenizer.eos_token_id is not None:
            response_ids = response_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    if max_length is not None and len(ids) > max_length:
        keep = 1 if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id] else 0
        ids = ids[:keep] + ids[len(ids) - (max_length - keep):]
    return ids


def pad_batch(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest row: (input_ids (B, T), attention_mask (B, T))."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return input_ids, mask


def reward_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-head rewards (B, H) read at the last attended position of each row (float32).

    Runs the backbone once with position ids from the attention mask (so left padding shifts
    nothing), then applies `score` to one hidden state per row. Works on a peft-wrapped model.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, inner.base_model_prefix)
    kwargs = {}
    params = inspect.signature(backbone.forward).parameters
    if "position_ids" in params:
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, T)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, D)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    last = (positions * attention_mask.long()).argmax(-1)  # (B,) last attended position
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)
    return _head(model)(pooled).float()  # (B, H)


def normalise(model, rewards: torch.Tensor) -> torch.Tensor:
    """(r - mean) / std per head with the model's stored `tether_reward` normalisation (if any)."""
    stats = getattr(model.config, "tether_reward", None)
    if not stats:
        return rewards
    mean = torch.as_tensor(stats["mean"], dtype=rewards.dtype, device=rewards.device)  # (H,) or ()
    std = torch.as_tensor(stats["std"], dtype=rewards.dtype, device=rewards.device)
    return (rewards - mean) / std  # (N, H)


@torch.no_grad()
def score_ids(model, rows: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """Raw rewards (N, H) for token-id rows, batched by length (little padding), in input order."""
    device = next(model.parameters()).device
    pad = model.config.pad_token_id or 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.zeros((len(rows), model.config.num_labels), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, mask = pad_batch([rows[i] for i in idx], pad)
        out[idx] = reward_forward(model, input_ids.to(device), mask.to(device)).cpu()
    return out  # (N, H)


def score_texts(model, tokenizer, items: list[tuple[Prompt, str, bool]], batch_size: int = 16,
                max_length: int = 512, normalise_scores: bool = True) -> torch.Tensor:
    """Rewards (N, H) for (prompt, response, finished) items, normalised with the model's stored
    mean/std unless `normalise_scores=False`. No gradients; the model's train/eval mode is kept."""
    rows = [encode_pair_text(tokenizer, p, r, f, max_length=max_length) for p, r, f in items]
    rewards = score_ids(model, rows, batch_size)
    return normalise(model, rewards) if normalise_scores else rewards


def ensemble_stats(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (N,), std (N,)) over the heads of (N, H) rewards; population std, 0 for one head."""
    return rewards.mean(-1), rewards.std(-1, correction=0)


def save_reward_model(model, tokenizer, path: str | Path, mean: float | list[float] = 0.0,
                      std: float | list[float] = 1.0) -> Path:
    """Save as a plain HF folder (safetensors + tokenizer) with `config.tether_reward`; a LoRA model is
    merged first (on a copy). Loads back with `AutoModelForSequenceClassification.from_pretrained`.
    The normalisation is also set on `model` itself, so :func:`score_texts` on it matches the folder."""
    heads = model.config.num_labels
    mean = [float(mean)] * heads if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * heads if isinstance(std, (int, float)) else [float(s) for s in std]
    if len(mean) != heads or len(std) != heads or min(std) <= 0:
        raise ValueError(f"need {heads} means and {heads} positive stds, got {mean} and {std}")
    model.config.tether_reward = {"mean": mean, "std": std, "heads": heads}  # also on the caller's model
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
