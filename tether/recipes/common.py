"""Pieces every training recipe shares: the accelerator, atomic checkpoints, the metrics log.

Kept to what two or more recipes need; each recipe still reads top to bottom on its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import torch

from tether.errors import TetherError

Prompt = str | list[dict]  # raw text, or chat messages ending with the user's turn
RewardFn = Callable[[list[Prompt], list[str], list[bool]], list[float]]  # (prompts, responses, finished)
GoldFn = Callable[[str, str, bool], float]  # (prompt text, response, finished) -> score


def training_attention(device: torch.device) -> str | None:
    """The attention kernel for a model that trains: "eager" on CPU, transformers' default elsewhere.
    PyTorch's CPU flash-attention backward is slow at RLHF lengths (bundled model, bf16: a PPO step of
    8 x 110 tokens 3.5 -> 2.5 s, a reward-model step of 8 pairs 2.0 -> 1.2 s; fp32 PPO 4.6 -> 4.0 s).
    Eager attention keeps a (B, heads, T, T) matrix per layer, fine at these lengths."""
    return "eager" if device.type == "cpu" else None


def frozen(model, device: torch.device, dtype: str):
    """A model that never trains (the reference, the reward model), on `device`, without gradients.

    Under bfloat16 autocast the weights of its linear layers are stored in bf16 (the output layer, often
    tied to the input embedding, and the norms and embeddings stay float32). Autocast rounds those weights
    to bf16 at every forward pass anyway, so the results are bit for bit those of float32 weights under
    autocast, in less memory (the bundled model: 311 MB instead of 513) and without per-pass casts.
    Storing *every* weight in bf16 would also put the residual stream in bf16: measured on the bundled SFT
    model, that moved the reference's log-probs by 0.26 nats a sequence, a KL bias at step 0."""
    model = model.to(device).requires_grad_(False)
    if dtype != "bfloat16":
        return model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)
    return model


def make_accelerator(dtype: str, stage: str):
    """An `accelerate.Accelerator`: CPU unless CUDA is there; `dtype` 'float32' or 'bfloat16' (autocast).

    Under `accelerate launch` / `torchrun` it joins the process group, so one code path serves one
    CPU process, several GPUs, DeepSpeed and FSDP.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = {"float32": "no", "bfloat16": "bf16"}.get(dtype)
    if precision is None:
        raise TetherError(f"{stage}: dtype must be 'float32' or 'bfloat16', not '{dtype}'")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", precision)  # set by `accelerate launch` configs
    if launched != precision:  # the recipe reads cfg.dtype too (e.g. which log-probs to recompute): no silent mix
        want = {"no": "float32", "bf16": "bfloat16"}.get(launched, launched)
        raise TetherError(f"{stage}: the accelerate config asks for mixed_precision '{launched}' but dtype is "
                          f"'{dtype}': pass --dtype {want} (or launch with --mixed_precision {precision})")
    kwargs = {"cpu": not torch.cuda.is_available(), "mixed_precision": precision}
    try:
        return Accelerator(**kwargs)
    except ValueError:  # an earlier run in this process chose other options; safe to reset when alone
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def save_checkpoint(accelerator, ckpt: Path, state: dict) -> None:
    """accelerator.save_state (models, optimizer, scheduler, RNG) + tether_state.json, swapped in whole:
    a kill at any moment leaves either the previous checkpoint or the new one, never half of one."""
    tmp, old = ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "tether_state.json").write_text(json.dumps(state))
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint_state(ckpt: Path) -> dict | None:
    """tether_state.json of a complete checkpoint, or None. A kill between the two renames of
    :func:`save_checkpoint` leaves only `<ckpt>.old`; that one is complete and is used."""
    for path in (ckpt, ckpt.with_name(ckpt.name + ".old")):
        if (path / "tether_state.json").is_file():
            if path != ckpt:
                path.rename(ckpt)
            return json.loads((ckpt / "tether_state.json").read_text())
    return None


class MetricsLog:
    """metrics.jsonl + TensorBoard under `out`, written by the main process only.

    `step` is where a resumed run restarts: records after it (written by the run that was killed
    after its last checkpoint) are dropped, and TensorBoard purges them too.
    """

    def __init__(self, out: Path, step: int, main: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.out, self.main = out, main
        self.writer = None
        if main:
            out.mkdir(parents=True, exist_ok=True)
            path = out / "metrics.jsonl"
            old = path.read_text().splitlines() if step and path.exists() else []
            path.write_text("".join(f"{ln}\n" for ln in old if json.loads(ln)["step"] <= step))
            self.writer = SummaryWriter(str(out / "tb"), purge_step=step or None)

    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                tag = k.replace("eval_", "eval/", 1) if k.startswith("eval_") else f"train/{k}"
                self.writer.add_scalar(tag, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def prompt_order(n: int, batch: int, update: int, rank: int, world: int, seed: int) -> list[int]:
    """Prompt indices for one update on one process: an endless stream of seeded permutations of the
    n prompts (a fresh shuffle per pass), cut into batches; the same on a resumed run."""
    start = (update * world + rank) * batch
    out = []
    for pos in range(start, start + batch):
        epoch, i = divmod(pos, n)
        out.append(random.Random(seed * 7919 + epoch).sample(range(n), n)[i])
    return out


def accelerate_broadcast(obj):
    """Send the main process's Python object to every process."""
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box)
    return box[0]


# --- several processes: which micro-batches, gradient accumulation, summed metrics ----------------

def step_micro_batches(step: int, per_step: int, n_plan: int, rank: int, world: int) -> tuple[list, int]:
    """This process's share of optimizer step `step` of a batch plan: ([(plan index, real)], n), where
    n is the step's micro-batches on all processes (per_step = grad_accum x world, fewer at the end).

    They are dealt round-robin, so which micro-batches form a step does not depend on the process
    count, only which process computes them. Every process gets ceil(n / world) of them, so DDP,
    FSDP and DeepSpeed see the same collectives everywhere: one short of that repeats the step's first
    micro-batch with real=False, to be weighted 0. Weight a real one's mean loss by world / n: DDP
    averages gradients over processes, so the step's gradient is the mean over its n micro-batches."""
    first = step * per_step
    n = min(per_step, n_plan - first)
    mine = [(m, True) for m in range(first + rank, first + n, world)]
    return mine + [(first, False)] * (-(-n // world) - len(mine)), n


@contextlib.contextmanager
def accumulating(accelerator, model, last: bool):
    """Forward and backward of one micro-batch of an optimizer step: gradients are all-reduced only
    on the `last` one (DDP/FSDP no_sync), and DeepSpeed, which steps its optimizer inside backward,
    is told whether this backward ends the step."""
    accelerator.gradient_state._set_sync_gradients(last)
    try:
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)


def all_sum(accelerator, values: dict[str, float]) -> dict[str, float]:
    """Each value summed over all processes (one all-reduce); the values themselves with one process.
    Metrics are logged as sums over everything the processes did, divided by summed counts."""
    if accelerator.num_processes == 1 or not values:
        return {k: float(v) for k, v in values.items()}
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=accelerator.device)
    return dict(zip(values, accelerator.reduce(t, "sum").tolist()))


def grad_norm_value(norm) -> float:
    """accelerator.clip_grad_norm_'s result as a float (DeepSpeed clips inside its step and may give None)."""
    return float("nan") if norm is None else float(norm)


def masked_moments(accelerator, x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(mean, unbiased variance) of the valid entries of x on all processes together (two passes, as
    `algos.advantages.masked_var`), so per-batch statistics mean the global batch at any process count."""
    m = mask.bool()
    s = all_sum(accelerator, {"n": m.sum(), "sum": torch.where(m, x, 0.0).sum()})
    mean = s["sum"] / max(s["n"], 1.0)
    sq = all_sum(accelerator, {"sq": torch.where(m, (x - mean) ** 2, 0.0).sum()})["sq"]
    return mean, sq / max(s["n"] - 1.0, 1.0)


def whiten_across(accelerator, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """`algos.advantages.masked_whiten` with the mean and variance of the global batch (Huang et al. 2022
    whiten per batch; a batch split over processes is still one batch). Padding becomes 0."""
    mean, var = masked_moments(accelerator, x, mask)
    out = (x - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)  # (B, T)
    return torch.where(mask.bool(), out, 0.0)


def gather_cpu(accelerator, x: torch.Tensor) -> torch.Tensor:
    """x (same shape on every process) concatenated over processes along dim 0, on the CPU."""
    return x if accelerator.num_processes == 1 else accelerator.gather(x.to(accelerator.device)).cpu()
