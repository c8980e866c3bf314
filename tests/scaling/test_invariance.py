"""Every recipe on 2 processes (gloo, CPU) gives the same per-step metrics as on 1 process with the
same global batch, and a 2-process run (stopped, or killed with SIGKILL) resumes on 1 process to the
same end.

What is compared: every step's metrics.jsonl record of the tiny word model (tests/scaling/driver.py):
sft/rm/dpo loss (and accuracy, margin, grad norm), ppo/rloo/grpo reward, KL, losses, entropy and grad
norm. For the RL recipes this is a whole trajectory, samples included: each sample is drawn from its
own seed (`rollout.generate(seeds=...)`), so a process count changes which process draws it, not what
it draws; advantages are whitened and losses token-averaged over the global batch.

Tolerance: |a - b| <= 1e-4 * |b| + 1e-6 (float32). The two runs do the same arithmetic in another
order: DDP all-reduces (sums) gradients that one process accumulates micro-batch by micro-batch, token
counts and statistics are summed across processes, and rows are padded to other widths, so results
differ by float rounding (~1e-7 relative per step), which a few Adam steps grow a little. The 1e-6
floor is for quantities that are 0 up to rounding (RLOO's policy loss at ratio 1 is -mean(advantage),
~1e-8). An error in the distributed logic (a loss averaged per process, whitening per process, a
micro-batch counted twice, samples that depend on the process) moves them by 1e-2 or more.

Each launch runs all six recipes in one process group (~10-20 s); the module takes about a minute.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("driver.py")
ROOT = Path(__file__).resolve().parents[2]
RECIPES = ["sft", "rm", "dpo", "ppo", "rloo", "grpo"]
KEYS = ["loss", "accuracy", "margin", "reward", "kl", "kl_k3", "policy_loss", "value_loss", "kl_loss", "entropy",
        "grad_norm"]
RTOL, ATOL = 1e-4, 1e-6



def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                         "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, *args: str) -> list[str]:
    """The command line that runs `args` on n processes: plain python for 1, `accelerate launch` for more
    (`--multi_gpu` is accelerate's torchrun launcher; on a machine without CUDA the processes join a
    gloo group and run on the CPU)."""
    if n == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def run_driver(n: int, model, out: Path, recipes=RECIPES, *flags: str, timeout: int = 180) -> None:
    cmd = launch(n, str(DRIVER), str(model), str(out), ",".join(recipes), *flags)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


def records(out: Path) -> list[dict]:
    """Per-step training records (the final evaluation line has none of KEYS' losses and is dropped)."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k in r for k in KEYS)]


def assert_same_trajectory(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 4
    for ra, rb in zip(a, b):
        for k in KEYS:
            if k in rb:
                assert abs(ra[k] - rb[k]) <= RTOL * abs(rb[k]) + ATOL, (ra["step"], k, ra[k], rb[k])


@pytest.fixture(scope="module")
def runs(word_model_dir, tmp_path_factory):
    """One process, two processes, and two processes stopped after step 2 then resumed on one."""
    root = tmp_path_factory.mktemp("scaling")
    t0 = time.perf_counter()
    run_driver(1, word_model_dir, root / "one")
    run_driver(2, word_model_dir, root / "two")
    run_driver(2, word_model_dir, root / "cut", RECIPES, "--stop-after", "2")
    for r in RECIPES:
        assert (root / "cut" / r / "checkpoint" / "tether_state.json").is_file(), r
        assert not (root / "cut" / r / "model").exists()
    run_driver(1, word_model_dir, root / "cut", RECIPES, "--resume")
    print(f"scaling runs: {time.perf_counter() - t0:.0f} s")
    return root


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_processes_match_one_at_the_same_global_batch(runs, recipe):
    one, two = records(runs / "one" / recipe), records(runs / "two" / recipe)
    assert_same_trajectory(two, one)
    if recipe in ("ppo", "rloo", "grpo"):  # the samples themselves are the same: rewards vary along the run
        assert len({r["reward"] for r in one}) > 1


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_two_process_run_resumes_on_one_process_to_the_same_end(runs, recipe):
    cut, one = runs / "cut" / recipe, runs / "one" / recipe
    assert (cut / "model" / "config.json").is_file() and not (cut / "checkpoint").exists()
    final = json.loads((cut / "metrics.json").read_text())
    expected = json.loads((one / "metrics.json").read_text())
    count = "updates" if recipe in ("ppo", "rloo", "grpo") else "steps"
    assert final[count] == expected[count] == 4
    assert_same_trajectory(records(cut), records(one))  # steps 1-2 on two processes, 3-4 on one


def test_sigkilled_two_process_ppo_resumes_on_one_process(runs, word_model_dir, tmp_path):
    """A real kill: both processes blocked in update 3 (after the checkpoint of update 2), SIGKILL to each
    and to the launcher, then `--resume` on one process ends like the uninterrupted run (and nothing of
    the killed run is left to write after it: the metrics hold each step once)."""
    cmd = launch(2, str(DRIVER), str(word_model_dir), str(tmp_path), "ppo", "--hang")
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    state = tmp_path / "ppo" / "checkpoint" / "tether_state.json"
    try:
        deadline = time.monotonic() + 150
        while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state.is_file(), proc.stderr.read()[-3000:] if proc.poll() is not None else "no checkpoint in time"
        time.sleep(1.0)
        assert proc.poll() is None  # still running (blocked in update 3) when killed
    finally:  # SIGKILL to both training processes (each in its own session) and to the launcher
        for pid_file in tmp_path.glob("pid-*"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert len(list(tmp_path.glob("pid-*"))) == 2
    assert json.loads(state.read_text())["update"] == 2
    run_driver(1, word_model_dir, tmp_path, ["ppo"], "--resume")
    assert json.loads((tmp_path / "ppo" / "metrics.json").read_text())["updates"] == 4
    assert_same_trajectory(records(tmp_path / "ppo"), records(runs / "one" / "ppo"))
