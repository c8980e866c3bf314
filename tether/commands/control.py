"""`tether control`: RLHF for a gymnasium agent from comparisons of its trajectory clips."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import WorkspaceOpt, console, load_function, stage_runs, user_errors
from tether.errors import TetherError


@user_errors
def control(env: str = typer.Option("Pendulum-v1", "--env", help="gymnasium environment id, e.g. Pendulum-v1, "
                                    "HalfCheetah-v5 (MuJoCo, through the `mujoco` wheel)."),
            steps: int = typer.Option(100_000, help="Environment steps in all (clip collection included)."),
            labels: int = typer.Option(300, "--labels", help="Label budget: comparisons asked in all."),
            fragment_length: int = typer.Option(25, "--fragment-length", help="Steps per clip."),
            ensemble_size: int = typer.Option(3, "--ensemble-size", help="Reward MLPs in the ensemble."),
            selection: str = typer.Option("disagreement", help="Which pairs to ask: 'disagreement' (ensemble "
                                          "variance of the predicted preference) or 'random'."),
            labeler: str = typer.Option("synthetic", "--labeler", help="Who answers the clip comparisons: "
                                        "'synthetic' (the higher true return wins) or 'web' (people in `tether "
                                        "serve`: each iteration's pairs become pairwise tasks and the run waits)."),
            overlap: int = typer.Option(1, help="--labeler web: labelers per clip pair (each answer is a label)."),
            poll_seconds: float = typer.Option(5.0, "--poll-seconds", help="--labeler web: how often to look "
                                               "for answers."),
            web_timeout_minutes: Optional[float] = typer.Option(None, "--web-timeout-minutes", help="--labeler web: "
                                                                "stop waiting after this (--resume waits again)."),
            noise: float = typer.Option(0.0, help="Synthetic labeler: probability of a coin-flip answer."),
            temperature: float = typer.Option(0.0, help="Synthetic labeler: Boltzmann temperature, in return "
                                              "units (0: always the higher true return)."),
            behaviour: Optional[str] = typer.Option(None, "--behaviour", help="A behaviour to teach instead of "
                                                    "the env's reward: FILE.py:FUNC or MODULE:FUNC, called as "
                                                    "f(obs, action, next_obs) on batches -> one number per "
                                                    "transition, e.g. tether.control.behaviours:spin_clockwise."),
            iterations: Optional[int] = typer.Option(None, help="Agent/label/reward iterations (default: one "
                                                     "per PPO rollout, at most 50)."),
            n_envs: Optional[int] = typer.Option(None, "--n-envs", help="Parallel envs (default: the env's preset)."),
            eval_episodes: int = typer.Option(10, "--eval-episodes", help="Episodes per true-return evaluation."),
            threads: int = typer.Option(1, help="torch CPU threads."),
            seed: int = typer.Option(0),
            store: bool = typer.Option(True, help="Record every comparison in the workspace database."),
            resume: bool = typer.Option(False, help="Continue the latest control run from its checkpoint."),
            workspace: Path = WorkspaceOpt):
    """Train an agent on a reward learned from clip comparisons (Christiano et al. 2017).

    Each iteration: PPO acts on the learned reward, clips are cut from its experience, pairs are chosen
    and answered by a synthetic labeler (the higher true return wins) or, with --labeler web, by people
    in `tether serve` (the run waits for them), and the reward ensemble is retrained. Outputs go to
    runs/control-N/ (agent.zip, reward.pt, clips.npz, labels.jsonl, metrics)."""
    from tether.control.env import check_env
    from tether.control.recipe import ControlConfig, run
    from tether.workspace import open_workspace

    if selection not in ("disagreement", "random"):
        raise TetherError(f"--selection must be 'disagreement' or 'random', not {selection!r}")
    if labeler not in ("synthetic", "web"):
        raise TetherError(f"--labeler must be 'synthetic' or 'web', not {labeler!r}")
    if labeler == "web" and not store:
        raise TetherError("--labeler web needs the workspace database: drop --no-store")
    if poll_seconds <= 0:
        raise TetherError(f"--poll-seconds must be > 0, not {poll_seconds}")
    if web_timeout_minutes is not None and web_timeout_minutes < 0:
        raise TetherError(f"--web-timeout-minutes must be >= 0, not {web_timeout_minutes}")
    if not 0.0 <= noise <= 1.0:
        raise TetherError(f"--noise must be between 0 and 1, not {noise}")
    if temperature < 0:
        raise TetherError(f"--temperature must be >= 0, not {temperature}")
    for name, value in (("--steps", steps), ("--labels", labels), ("--fragment-length", fragment_length),
                        ("--ensemble-size", ensemble_size), ("--eval-episodes", eval_episodes),
                        ("--overlap", overlap)):
        if value < 1:
            raise TetherError(f"{name} must be >= 1, not {value}")
    fn = load_function(behaviour, "--behaviour") if behaviour else None
    check_env(env)  # before a run folder is made: an unknown id fails here, naming it
    ws = open_workspace(workspace)
    db = ws.store() if store else None
    runs = stage_runs(ws.root, "control")
    if resume and not runs:
        raise TetherError("--resume: no control run in this workspace to continue")
    out = runs[-1] if resume else ws.new_run_dir("control")
    cfg = ControlConfig(env_id=env, total_steps=steps, label_budget=labels, fragment_length=fragment_length,
                        ensemble_size=ensemble_size, selection=selection, labeler=labeler, overlap=overlap,
                        web_poll_seconds=poll_seconds, web_timeout_minutes=web_timeout_minutes,
                        noise=noise, temperature=temperature,
                        iterations=iterations, ppo={"n_envs": n_envs} if n_envs else {}, behaviour=fn,
                        behaviour_name=behaviour.rpartition(":")[2] if behaviour else "env-reward",
                        eval_episodes=eval_episodes, seed=seed, threads=threads, out_dir=str(out))
    run_id = db.start_run("control", ws.config.round, {k: str(v) for k, v in vars(cfg).items()}, str(out)) \
        if db is not None else None
    try:
        res = run(cfg, store=db, run_id=run_id, resume=resume, say=lambda msg: console.print(Text(msg)))
    except BaseException:
        if db is not None:
            db.finish_run(run_id, "failed")
        raise
    if db is not None:
        db.finish_run(run_id, "done", {"env_steps": res.env_steps, "labels": res.labels,
                                       "eval_true_return": res.eval_return, "seconds": res.seconds})
    what = f"behaviour '{cfg.behaviour_name}'" if fn else "the env's reward"
    console.print(Text(f"{env}: {res.env_steps} env steps, {res.labels} labels in {res.seconds / 60:.1f} min; "
                       f"true return ({what}) of the final agent {res.eval_return:.1f} "
                       f"(last training episodes {res.train_return:.1f})"))
    console.print(Text(f"outputs: {res.out_dir}  (agent.zip, reward.pt, clips.npz, labels.jsonl, metrics.jsonl)"))
