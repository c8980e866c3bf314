"""The vLLM rollout backend: generation for PPO, RLOO/GRPO (`rollout_backend="vllm"`) on a CUDA GPU.

vLLM is imported lazily, only here, and only when this backend is asked for; without vLLM or CUDA,
asking for it is a TetherError that says so (the default backend, "hf", is `tether.rollout`).

Layout ("colocated", as TRL's `vllm_mode="colocate"`): every training process owns one vLLM engine on
its own GPU, in its own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), using `gpu_memory_utilization`
of it; it generates that process's share of the batch. After every update the trainer's weights are
pushed into the engine (`load_weights`, a LoRA policy merged first) before the next batch is sampled,
so the engine samples from the current policy. Its kernels and precision still differ from the
trainer's, so the log-probs differ a little: the engine returns the log-prob of each sampled token
under logits / temperature (`logprobs_mode="processed_logprobs"`), the trainer recomputes its own, and
the recipes weight each token by `algos.offpolicy.truncated_importance_weights` (TIS, Yao et al. 2025).

Sampling is seeded per sequence (`SamplingParams(seed=...)`), like `rollout.generate(seeds=...)`, but
vLLM's random streams are not the HF backend's: the same seed gives another sample on each backend.
Not yet run by tether's tests (no GPU with vLLM so far); tests/test_rollout_vllm.py runs when one is.
"""

from __future__ import annotations

import os

import torch

from tether.errors import TetherError
from tether.rollout import Generation

BACKENDS = ("hf", "vllm")


def unavailable() -> str | None:
    """Why the vLLM backend cannot run here (None: it can)."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU and none is visible"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed (pip install vllm, in an environment whose torch matches it)"
    return None


def check_backend(name: str, stage: str) -> None:
    """TetherError for an unknown backend, or for "vllm" where it cannot run."""
    if name not in BACKENDS:
        raise TetherError(f"{stage}: rollout_backend must be one of {', '.join(BACKENDS)}, not '{name}'")
    if name == "vllm" and (why := unavailable()):
        raise TetherError(f"{stage}: rollout_backend 'vllm' cannot run here: {why}; use rollout_backend 'hf'")


def _hf_state_dict(model):
    """(name, tensor) pairs of the policy in plain HF naming: a peft model's adapters merged into copies of
    the base weights (the adapters themselves stay as they are), LoRA tensors left out."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(model, "merge_adapter"):
        model.merge_adapter()
    try:
        for name, tensor in inner.state_dict().items():
            if "lora_" in name:
                continue
            yield name.replace(".base_layer", ""), tensor.detach().clone()
    finally:
        if hasattr(model, "unmerge_adapter"):
            model.unmerge_adapter()


class VLLMRollout:
    """One vLLM engine for this process, started from the policy's folder (`models.resolve(name)`)."""

    def __init__(self, path: str, tokenizer, *, seed: int = 0, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.3, max_model_len: int = 2048):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model in this process: weight sync
        from vllm import LLM

        self.tokenizer = tokenizer
        device = torch.cuda.current_device()
        self.llm = LLM(model=str(path), tokenizer=str(path), dtype=dtype, seed=seed + device,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_prefix_caching=True, logprobs_mode="processed_logprobs")

    def _model(self):
        executor = self.llm.llm_engine.model_executor
        worker = executor.driver_worker
        worker = getattr(worker, "worker", worker)  # a wrapper around the worker in recent vLLMs
        return worker.model_runner.model

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """Push the trainer's current weights into the engine, then drop its cached prefixes (their
        keys/values were computed by the old weights)."""
        self._model().load_weights(weights=_hf_state_dict(model))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[tuple[object, list[int]]], *, temperature: float, top_p: float = 1.0,
                 max_new_tokens: int, seeds: list[int], stop_ids: set[int]) -> list[Generation]:
        """One Generation per (key, prompt ids), in order; `logprobs` (n,) are the engine's, under
        logits / temperature, EOS included (NaN where the engine did not report one)."""
        from vllm import SamplingParams

        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=s,
                                 logprobs=0, stop_token_ids=sorted(stop_ids), skip_special_tokens=True)
                  for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": ids} for _, ids in prompts], sampling_params=params,
                                 use_tqdm=False)
        gens = []
        for (key, _), s, out in zip(prompts, seeds, outs):
            o = out.outputs[0]
            toks = list(o.token_ids)
            lps = [next(iter(d.values())).logprob if d else float("nan") for d in (o.logprobs or [])]
            finished = o.finish_reason == "stop"
            stop = toks[-1] if toks and toks[-1] in stop_ids else None
            kept = toks[:-1] if stop is not None else toks
            if finished and stop is None:  # EOS ended it but is not in token_ids: add it, log-prob unknown
                stop = o.stop_reason if isinstance(o.stop_reason, int) else self.tokenizer.eos_token_id
                lps = lps[:len(kept)] + [float("nan")]
            n = len(kept) + finished
            gens.append(Generation(key=key, text=self.tokenizer.decode(kept, skip_special_tokens=True), token_ids=kept,
                                   num_tokens=n, finished=finished, seed=s, stop_token=stop if finished else None,
                                   logprobs=torch.tensor(lps[:n], dtype=torch.float32)))
        return gens
