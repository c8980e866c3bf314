"""Pieces every training recipe shares: the accelerator, atomic checkpoints, the metrics log.

Kept to what two or more recipes need; each recipe still reads top to bottom on its own.
"""

from __future__ import annotations

import json
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
