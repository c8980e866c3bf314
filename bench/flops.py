"""Model FLOPs utilisation for the benches: a matmul peak measured in the same run, and model FLOPs.

MFU = (model FLOPs of the work done) / (seconds) / (peak matmul FLOP/s of this machine, measured now
at the same thread count and dtype). Model FLOPs count the matmuls of a dense decoder, 2·N per token
for a forward pass and 6·N for a forward and backward, N = the model's matmul parameters (the tied
embedding counted once, as the output head); attention's own FLOPs are left out (under 5 % at these
lengths). Work an implementation saves (a prompt run once for k answers) is not credited as FLOPs:
MFU measures how fast the algorithm's work gets done, not how much of it was skipped.
"""

from __future__ import annotations

import time


def matmul_peak(threads: int, dtype: str = "float32", n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of an n x n @ n x n matmul on `threads` threads (best of repeated timings)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(2):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(old)
    return 2 * n**3 / best


def matmul_params(model_dir: str) -> int:
    """Parameters that enter matmuls: every 2-D weight except an untied input embedding."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    seen, n = set(), 0
    for p in model.parameters():
        if p.dim() == 2 and id(p) not in seen and not (p is emb and emb is not head):
            seen.add(id(p))
            n += p.numel()
    return n
