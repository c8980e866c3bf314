"""Pieces every command shares: consoles, the workspace option, error printing, small parsers."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from tether.errors import TetherError

# long paths and messages stay on one line; under `accelerate launch` only the main process prints
console = Console(soft_wrap=True, quiet=os.environ.get("RANK", "0") != "0")
err_console = Console(stderr=True, soft_wrap=True)


def fast_bf16() -> bool:
    """Whether bf16 matmuls beat float32 here: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16
    (measured: a 2048² matmul on 2 cores of an AMX Xeon ran at 2,219 GFLOP/s in bf16 against 280 in
    float32; on an AVX512-BF16 EPYC 392 against 165; without either, bf16 is slower than float32)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: keep float32
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def resolve_dtype(dtype: str) -> str:
    """The training precision for a `--dtype` option: 'float32' and 'bfloat16' as given; 'auto' is what
    an `accelerate launch` config asks for, else 'bfloat16' where `fast_bf16()`, else 'float32'."""
    if dtype != "auto":
        return dtype
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched in ("no", "bf16"):
        return {"no": "float32", "bf16": "bfloat16"}[launched]
    return "bfloat16" if fast_bf16() else "float32"


DtypeOpt = typer.Option("auto", help="float32, bfloat16 (autocast; weights stay float32) or auto: bfloat16 where "
                        "its matmuls are fast (CUDA, CPUs with AMX or AVX512-BF16), else float32.")
WorkspaceOpt = typer.Option(Path("."), "--workspace", "-w", envvar="TETHER_WORKSPACE",
                            help="The workspace folder (made by `tether init`).")


def user_errors(fn):
    """Print a TetherError as one message and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TetherError as e:
            err_console.print(Text("error: ", style="bold red") + Text(str(e)))
            raise typer.Exit(1) from None

    return wrapper


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # accelerate warns at every checkpoint that it dropped the tied output embedding (SmolLM2 ties
    # lm_head to the input embedding); reloading re-ties it, and the resume tests check the result
    logging.getLogger("accelerate.utils.other").addFilter(
        lambda record: "Removed shared tensor" not in record.getMessage())


PLURAL = {"comparison": "comparisons", "ranking": "rankings", "rating": "ratings", "thumb": "thumbs",
          "flaws": "flaw reports", "critique": "critiques"}


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {PLURAL.get(k, k)}" for k, n in counts.items())


def parse_rounds(rounds: str | None) -> list[int] | None:
    """'0,2' -> [0, 2]; None -> None (all rounds)."""
    try:
        return [int(r) for r in rounds.split(",")] if rounds else None
    except ValueError:
        raise TetherError(f"--rounds: expected comma-separated whole numbers, got {rounds!r}") from None


def stage_runs(root: Path, stage: str) -> list[Path]:
    """The workspace's runs/<stage>-N folders, oldest first."""
    return sorted((root / "runs").glob(f"{stage}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))


def latest_model(root: Path, stage: str) -> Path | None:
    """runs/<stage>-N/model of the newest run that saved one, or None."""
    found = [p / "model" for p in stage_runs(root, stage) if (p / "model" / "config.json").is_file()]
    return found[-1] if found else None


def load_function(spec: str, option: str):
    """`package.module:name` or `path/to/file.py:name` -> the Python object it names."""
    import importlib
    import importlib.util

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise TetherError(f"{option}: expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise TetherError(f"{option}: no such file {path}")
            loader_spec = importlib.util.spec_from_file_location(f"tether_user_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise TetherError(f"{option}: cannot import {module_name}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TetherError(f"{option}: {module_name} has no function {attr!r}")
    return fn



def launched() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / `torchrun`; (0, 1) for a plain run."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _pick_run_dir(ws, stage: str, resume: bool) -> Path:
    runs = stage_runs(ws.root, stage)
    return runs[-1] if resume and runs else ws.new_run_dir(stage)


def shared_run_dir(ws, stage: str, resume: bool) -> Path:
    """runs/<stage>-N for this run: the latest one with `resume`, else a new one. Under `accelerate launch`
    the main process picks (and makes) it and sends its name to the others, so all write to one folder."""
    rank, world = launched()
    if world == 1:
        return _pick_run_dir(ws, stage, resume)
    import torch
    from accelerate import PartialState

    from tether.recipes.common import accelerate_broadcast

    PartialState(cpu=not torch.cuda.is_available())  # joins the process group (the recipe's accelerator reuses it)
    return Path(accelerate_broadcast(str(_pick_run_dir(ws, stage, resume)) if rank == 0 else None))


def reward_source(ws, reward_model, reward_fn: str | None):
    """(function or None, reward model folder or None) for an RL command: `--reward-fn` loaded, or
    `--reward-model`, or else the workspace's newest reward model; a clear error when there is none."""
    if reward_fn is not None:
        if reward_model is not None:
            raise TetherError("give --reward-model or --reward-fn, not both")
        return load_function(reward_fn, "--reward-fn"), None
    if reward_model is None:
        reward_model = latest_model(ws.root, "rm")
        if reward_model is None:
            raise TetherError("no reward model in this workspace: train one with `tether rm`, "
                              "or pass --reward-model or --reward-fn")
    return None, reward_model


def training_prompts(store, split: str, eval_split: str) -> tuple[list, list]:
    """The prompts of `split` (an error naming the split if there are none) and of `eval_split`."""
    prompts = store.prompts(split)
    if not prompts:
        raise TetherError(f"no prompts in split '{split}': import some with `tether import prompts FILE`")
    return prompts, store.prompts(eval_split)


def tracked(store, stage: str, round: int, params: dict, out, fn, main: bool = True):
    """Run `fn()` as a database run row of `stage` tagged with `round` (written by the main process only):
    'failed' if it raises, else 'done' with the result's metrics (its config left out). Returns fn's result."""
    run_id = store.start_run(stage, round, params, str(out)) if main else None
    try:
        res = fn()
    except BaseException:
        if main:
            store.finish_run(run_id, "failed")
        raise
    if main:
        store.finish_run(run_id, "done", {k: v for k, v in res.metrics.items() if k != "config"})
    return res
