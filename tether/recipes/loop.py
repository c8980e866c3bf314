"""`tether loop`: rounds of sample -> feedback -> reward model -> policy -> evaluation.

Each round learns from the last (InstructGPT, Ouyang et al. 2022, sec. 3.5; Llama 2's iterated RLHF):

1. **sample** `k` answers per training prompt from the current policy, tagged with the round;
2. **feedback** on them: simulated labelers judged by the hidden gold scorer, an AI judge (RLAIF) on
   same-prompt pairs, both (the judge also answers the simulated labelers' pairwise tasks), or people
   in the web app (`tether serve`): the loop makes the round's tasks and waits until they are done;
3. **reward model** retrained from the starting model on *all* feedback so far, its rewards
   normalised on this round's samples (the policy it will be used on);
4. **policy**: PPO, RLOO, GRPO (against that reward model, KL to the round's starting policy) or DPO
   (on all pairs so far, the round's starting policy as reference);
5. **eval**: the new policy against the loop's starting (SFT) policy on the held-out prompts: gold win
   rate, gold, reward, KL to SFT.

State lives in `runs/loop-N/state.json`, written after every step: a killed loop (`--resume`) skips
the steps that finished and resumes the one that was running from its own checkpoint. Every run row in
the database carries its round (the workspace's `round` is set as each round starts), and at the end
the final policy becomes the workspace policy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tether.errors import TetherError
from tether.workspace import Workspace

ALGORITHMS = ("ppo", "rloo", "grpo", "dpo")
FEEDBACK = ("simulated", "judge", "mix", "web")  # mix: simulated labelers + the judge on their pairwise tasks;
# web: people in `tether serve`, the loop waits for them
STEPS = ("sample", "feedback", "rm", "policy", "eval")


@dataclass
class LoopConfig:
    rounds: int = 2
    algorithm: str = "ppo"  # one of ALGORITHMS
    feedback: str = "simulated"  # one of FEEDBACK
    judge_url: str | None = None  # judge / mix: an OpenAI-compatible endpoint; None: a local HF model
    judge_model: str | None = None  # the local judge model (default: the bundled one) or the endpoint's model name
    judge_rubric: str | None = None  # a rubric file (default: the built-in rubric)
    judge_weight: float = 1.0  # weight of the AI judge's labels in the reward model and DPO (0: leave out)
    web_kind: str = "rank"  # web: the task people get per prompt (rank all k answers, or pairwise, rating, ...)
    web_poll_seconds: float = 10.0  # web: how often the loop checks whether the round's tasks are done
    web_timeout_hours: float | None = None  # web: give up waiting after this long (None: wait)
    # sampling for feedback
    k: int = 4  # answers per prompt per round
    prompts_per_round: int | None = None  # training prompts sampled for feedback each round (None: all), a fresh
    # seeded draw each round; the policy stage trains on every training prompt
    max_new_tokens: int = 64
    temperature: float = 0.7
    # feedback
    items: int | None = None  # labeling items per round (None: one per training prompt)
    overlap: int = 3  # labelers per item
    labelers: int = 20  # simulated pool
    adversarial: int = 3
    random_labelers: int = 2
    # reward model
    rm_train_layers: int | None = 4  # train only the top layers and the head (None: all)
    rm_heads: int = 1
    rm_epochs: int = 2
    rm_lr: float | None = None  # None: 5e-5 (1e-4 with LoRA). A prompt's pairs are one batch element (rm by_prompt),
    # so a round's ~40 prompts make few steps: 5e-5 x 2 epochs agreed best with gold on a demo's feedback (bench/RESULTS.md)
    rm_continue: bool = False  # rounds after the first: start from the last round's reward model and train on the
    # new round's feedback only (faster; in the demo's measured run it forgot what round 0's labels taught: see README)
    rm_batch_size: int = 8
    # policy
    updates: int = 10  # ppo/rloo/grpo iterations per round
    batch_size: int = 16  # ppo: prompts per update; rloo/grpo: samples per update (batch_size // k prompts)
    mini_batch_size: int | None = None  # ppo: samples per optimizer step (None: min(8, batch_size))
    ppo_epochs: int = 1
    kl_coef: float = 0.05  # ppo kl_coef, rloo/grpo beta
    lr: float | None = None  # None: each recipe's default
    dpo_beta: float = 0.1
    lora_r: int | None = None
    # evaluation
    eval_samples: int = 2  # answers per held-out prompt and side
    split: str = "train"
    eval_split: str = "eval"
    dtype: str = "float32"  # training precision of every stage: float32 or bfloat16 (autocast)
    seed: int = 0


@dataclass
class LoopResult:
    out_dir: Path
    state: dict  # what state.json holds: per round, where each step's outputs are and the eval summary


def check(cfg: LoopConfig) -> None:
    """Refuse a bad config before any model is loaded, naming the field."""
    if cfg.rounds < 1:
        raise TetherError(f"loop: rounds must be at least 1, got {cfg.rounds}")
    if cfg.algorithm not in ALGORITHMS:
        raise TetherError(f"loop: algorithm must be one of {', '.join(ALGORITHMS)}, got {cfg.algorithm!r}")
    if cfg.feedback not in FEEDBACK:
        raise TetherError(f"loop: feedback must be one of {', '.join(FEEDBACK)}, got {cfg.feedback!r}")
    if cfg.prompts_per_round is not None and cfg.prompts_per_round < 1:
        raise TetherError(f"loop: prompts_per_round must be at least 1, got {cfg.prompts_per_round}")
    if cfg.feedback == "web" and cfg.web_kind not in ("rank", "pairwise", "rating", "thumbs", "flaws"):
        raise TetherError(f"loop: web_kind must be rank, pairwise, rating, thumbs or flaws, got {cfg.web_kind!r}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise TetherError(f"loop: dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    if cfg.k < 2:
        raise TetherError(f"loop: k must be at least 2 (feedback compares answers to one prompt), got {cfg.k}")
    if cfg.algorithm == "ppo" and cfg.batch_size % (cfg.mini_batch_size or min(8, cfg.batch_size)):
        raise TetherError(f"loop: batch_size ({cfg.batch_size}) must be a multiple of mini_batch_size "
                          f"({cfg.mini_batch_size})")
    if cfg.algorithm in ("rloo", "grpo") and cfg.batch_size < cfg.k:
        raise TetherError(f"loop: batch_size ({cfg.batch_size}) must hold at least one group of k={cfg.k} samples")


def _write(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def run(ws: Workspace, cfg: LoopConfig, resume: bool = False,
        say: Callable[[str], None] = print) -> LoopResult:
    """Run (or, with `resume`, continue the newest) loop in workspace `ws`; `say` prints progress lines."""
    from tether.commands.common import stage_runs

    check(cfg)
    store = ws.store()
    if not store.prompts(cfg.split):
        raise TetherError(f"loop: no prompts in split '{cfg.split}': import some with `tether import prompts FILE`")
    if not store.prompts(cfg.eval_split):
        raise TetherError(f"loop: no held-out prompts in split '{cfg.eval_split}' to evaluate on: import some with "
                          f"`tether import prompts FILE --split {cfg.eval_split}`")
    runs = stage_runs(ws.root, "loop")
    if resume and runs and (runs[-1] / "state.json").is_file():
        out = runs[-1]
        state = json.loads((out / "state.json").read_text())
        if state["config"] != dataclasses.asdict(cfg):
            changed = sorted(k for k, v in dataclasses.asdict(cfg).items() if state["config"].get(k) != v)
            raise TetherError(f"loop: {out} was started with other settings ({', '.join(changed)}); "
                              "resume with the same options, or start a new loop without --resume")
        say(f"resuming {out}")
    else:
        out = ws.new_run_dir("loop")
        state = {"config": dataclasses.asdict(cfg), "sft": ws.config.policy, "policy": ws.config.policy,
                 "first_round": ws.config.round, "rounds": []}
    path = out / "state.json"
    _write(path, state)

    for i in range(cfg.rounds):
        if i == len(state["rounds"]):
            state["rounds"].append({"round": state["first_round"] + i, "start_policy": state["policy"],
                                    "done": [], "started": None})
        rnd = state["rounds"][i]
        if len(rnd["done"]) == len(STEPS):
            continue
        ws.config.round = rnd["round"]
        ws.save()
        for step in STEPS:
            if step in rnd["done"]:
                continue
            say(f"round {rnd['round']} ({i + 1}/{cfg.rounds}): {step}")
            again = rnd["started"] == step  # this step was running when the loop was killed
            rnd["started"] = step
            _write(path, state)
            t0 = time.perf_counter()
            rnd[step] = STEP_FNS[step](ws, cfg, state, rnd, again, say, lambda: _write(path, state))
            rnd[step]["seconds"] = round(time.perf_counter() - t0, 1)
            rnd["done"].append(step)
            rnd["started"] = None
            if step == "policy":
                state["policy"] = rnd["policy"]["model"]
            _write(path, state)
    ws.config.policy = state["policy"]
    ws.config.round = state["rounds"][-1]["round"] + 1  # the next samples belong to a new round
    ws.save()
    return LoopResult(out, state)


# ---- the five steps: each gets the round's record (and `save`, to write state.json at once) and returns
# ---- what to keep in it

def _sample(ws, cfg: LoopConfig, state, rnd, again, say, save) -> dict:
    import random

    from sqlalchemy import select

    from tether.config import with_overrides
    from tether.data import schema as S
    from tether.recipes import sample

    ids = None
    if cfg.prompts_per_round is not None:
        with ws.store().session() as s:
            every = list(s.execute(select(S.Prompt.id).where(S.Prompt.split == cfg.split).order_by(S.Prompt.id)).scalars())
        ids = sorted(random.Random(cfg.seed * 1009 + rnd["round"]).sample(every, min(cfg.prompts_per_round, len(every))))
    scfg = with_overrides(ws.config.sample, dict(k=cfg.k, max_new_tokens=cfg.max_new_tokens,
                                                 temperature=cfg.temperature, split=cfg.split,
                                                 seed=cfg.seed + rnd["round"]))
    res = sample.run(ws, scfg, policy=rnd["start_policy"], round=rnd["round"], prompt_ids=ids,  # tops up after a kill
                     dtype=cfg.dtype)
    say(f"  {res.responses_added} answers stored ({res.finished_fraction:.0%} ended with EOS)")
    return {"responses_added": res.responses_added}


def _feedback(ws, cfg: LoopConfig, state, rnd, again, say, save) -> dict:
    from sqlalchemy import func, select

    from tether.data import schema as S
    from tether.feedback.simulate import SimulationConfig, simulate_feedback

    store = ws.store()
    out: dict = {}
    if cfg.feedback in ("simulated", "mix"):
        with store.session() as s:  # simulate_feedback stores a round in one transaction: all or nothing
            have = s.execute(select(func.count()).select_from(S.Task).where(S.Task.round == rnd["round"])).scalar()
        if have:  # labeled already (before a kill, or by hand): not labeled twice
            say(f"  round {rnd['round']} already has {have} labeling tasks; no simulated labels added")
        else:
            sim = SimulationConfig(labelers=cfg.labelers, adversarial=cfg.adversarial, random=cfg.random_labelers,
                                   overlap=cfg.overlap, items=cfg.items, seed=cfg.seed + rnd["round"])
            out["labels"] = simulate_feedback(store, sim, rnd["round"])
            say("  stored: " + ", ".join(f"{n} {k}" for k, n in out["labels"].items()))
    if cfg.feedback == "web":
        out["web"] = _web_feedback(ws, cfg, rnd, say)
    if cfg.feedback in ("judge", "mix"):
        import torch

        from tether.feedback.judge import HFBackend, Judge, OpenAIBackend, load_rubric
        from tether.feedback.judge_feedback import judge_stored_pairs

        torch.set_num_threads(ws.config.threads or os.cpu_count() or 1)
        backend = (OpenAIBackend(cfg.judge_url, model=cfg.judge_model or "default") if cfg.judge_url
                   else HFBackend(cfg.judge_model or "bundled"))
        with store.session() as s:
            prompts = s.execute(select(func.count(func.distinct(S.Response.prompt_id))).where(
                S.Response.round == rnd["round"], S.Response.source == "sample")).scalar()
        # judge: new same-prompt pairs (as many as items); mix: the simulated labelers' pairwise tasks
        counts = judge_stored_pairs(store, Judge(backend, load_rubric(cfg.judge_rubric)), round=rnd["round"],
                                    tasks=cfg.feedback == "mix", seed=cfg.seed + rnd["round"],
                                    new_pairs=0 if cfg.feedback == "mix" else (cfg.items or prompts))
        out["judge"] = counts  # a rerun after a kill answers only what the judge has not answered yet
        say(f"  AI judge ({backend.name}): " + ", ".join(f"{counts.get(c, 0)} {c}" for c in ("a", "b", "tie")))
    return out


def _web_feedback(ws, cfg: LoopConfig, rnd, say) -> dict:
    """Make the round's labeling tasks (once) for people in `tether serve`, then wait until every one has
    its labels; a progress line shows how many are done."""
    from sqlalchemy import func, select

    from tether.data import schema as S
    from tether.web.tasks import TaskSpec, create_tasks

    store = ws.store()
    with store.session() as s:
        mine = (select(func.count()).select_from(S.Task).join(S.Prompt, S.Prompt.id == S.Task.prompt_id)
                .where(S.Task.round == rnd["round"], S.Task.kind == cfg.web_kind, S.Prompt.split != S.CONTROL_SPLIT))
        if not s.execute(mine).scalar():
            made = create_tasks(s, TaskSpec(kind=cfg.web_kind, labels_needed=cfg.overlap, round=rnd["round"], k=cfg.k,
                                            seed=cfg.seed + rnd["round"]))
            s.commit()
            say(f"  {len(made)} {cfg.web_kind} tasks for round {rnd['round']}, {cfg.overlap} labelers each: "
                f"open `tether serve -w {ws.root}` and invite labelers (`tether labelers add NAME -w {ws.root}`)")
    t0 = time.monotonic()
    last = None
    while True:
        with store.session() as s:
            rows = dict(s.execute(select(S.Task.status, func.count()).join(S.Prompt, S.Prompt.id == S.Task.prompt_id)
                                  .where(S.Task.round == rnd["round"], S.Task.kind == cfg.web_kind,
                                         S.Prompt.split != S.CONTROL_SPLIT)  # clip tasks belong to `tether control`
                                  .group_by(S.Task.status)).all())
        total, done = sum(rows.values()) - rows.get("cancelled", 0), rows.get("done", 0)
        if (done, total) != last:
            say(f"  waiting for labelers: {done}/{total} tasks done")
            last = (done, total)
        if done >= total:
            return {"tasks": total}
        if cfg.web_timeout_hours is not None and time.monotonic() - t0 > 3600 * cfg.web_timeout_hours:
            raise TetherError(f"loop: round {rnd['round']}: {total - done} of {total} web tasks still open after "
                              f"{cfg.web_timeout_hours} h; `tether loop --resume` waits again")
        time.sleep(cfg.web_poll_seconds)


def _rm(ws, cfg: LoopConfig, state, rnd, again, say, save) -> dict:
    from tether.feedback.collect import collect_pairs, policy_samples, preference_examples
    from tether.models import LoraSettings
    from tether.recipes import rm

    store = ws.store()
    earlier = [r["rm"]["model"] for r in state["rounds"] if r["round"] < rnd["round"] and r.get("rm")]
    start = earlier[-1] if cfg.rm_continue and earlier else state["sft"]
    # continuing: this round's feedback on top of the last reward model; else every round's feedback so far
    collected = collect_pairs(store, [rnd["round"]] if earlier and cfg.rm_continue else None,
                              judge_weight=cfg.judge_weight)
    out = Path(rnd["rm_dir"]) if again and rnd.get("rm_dir") else ws.new_run_dir("rm")
    rnd["rm_dir"] = str(out)
    save()  # a kill from here on resumes this run folder
    layers = cfg.rm_train_layers
    if layers is not None:  # a default of 4 on a model with no more layers than that: train it whole
        from transformers import AutoConfig

        from tether.models import resolve

        if layers >= getattr(AutoConfig.from_pretrained(resolve(state["sft"])), "num_hidden_layers", layers + 1):
            layers = None
    rm_lr = cfg.rm_lr if cfg.rm_lr is not None else (None if cfg.lora_r else 5e-5)  # None: the recipe's LoRA default
    rcfg = rm.RMConfig(model=start, num_heads=cfg.rm_heads, epochs=cfg.rm_epochs, lr=rm_lr,
                       batch_size=cfg.rm_batch_size,
                       train_layers=layers, seed=cfg.seed, out_dir=str(out),
                       lora=LoraSettings(r=cfg.lora_r, alpha=2 * cfg.lora_r) if cfg.lora_r else None,
                       threads=ws.config.threads or os.cpu_count(), dtype=cfg.dtype)
    res = _track(store, "rm", rnd["round"], rcfg, out, lambda: rm.train(
        rcfg, preference_examples(store, collected), normalise_on=policy_samples(store, [rnd["round"]]),
        resume=again))
    m = res.metrics
    source = f"continued from {Path(start).parent.name} on this round's " if start != state["sft"] else ""
    say(f"  {source}{len(collected.pairs)} pairs; held-out accuracy {m.get('eval_accuracy', float('nan')):.3f}")
    return {"model": str(res.model_dir), "pairs": len(collected.pairs), "eval_accuracy": m.get("eval_accuracy")}


def _policy(ws, cfg: LoopConfig, state, rnd, again, say, save) -> dict:
    from tether.feedback.gold import gold_score
    from tether.models import LoraSettings

    store = ws.store()
    out = Path(rnd["policy_dir"]) if again and rnd.get("policy_dir") else ws.new_run_dir(cfg.algorithm)
    rnd["policy_dir"] = str(out)
    save()
    lora = LoraSettings(r=cfg.lora_r, alpha=2 * cfg.lora_r) if cfg.lora_r else None
    threads = ws.config.threads or os.cpu_count()
    start, rm_dir = rnd["start_policy"], rnd["rm"]["model"]
    if cfg.algorithm == "ppo":
        from tether.recipes import ppo

        pcfg = ppo.PPOConfig(policy=start, reward_model=rm_dir, lora=lora, lr=cfg.lr, updates=cfg.updates,
                             batch_size=cfg.batch_size, mini_batch_size=cfg.mini_batch_size or min(8, cfg.batch_size), ppo_epochs=cfg.ppo_epochs,
                             max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, kl_coef=cfg.kl_coef,
                             seed=cfg.seed + rnd["round"], out_dir=str(out), threads=threads, dtype=cfg.dtype)
        res = _track(store, "ppo", rnd["round"], pcfg, out, lambda: ppo.train(
            pcfg, store.prompts(cfg.split), gold_fn=gold_score, resume=again))
    elif cfg.algorithm in ("rloo", "grpo"):
        from tether.recipes import online

        pcfg = online.OnlineConfig(estimator=cfg.algorithm, policy=start, reward_model=rm_dir, lora=lora, lr=cfg.lr,
                                   updates=cfg.updates, prompts_per_update=max(1, cfg.batch_size // cfg.k), k=cfg.k,
                                   ppo_epochs=cfg.ppo_epochs, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, beta=cfg.kl_coef, seed=cfg.seed + rnd["round"],
                                   out_dir=str(out), threads=threads, dtype=cfg.dtype)
        res = _track(store, cfg.algorithm, rnd["round"], pcfg, out, lambda: online.train(
            pcfg, store.prompts(cfg.split), gold_fn=gold_score, resume=again))
    else:
        from tether.feedback.collect import collect_pairs, preference_examples
        from tether.recipes import dpo

        pcfg = dpo.DPOConfig(model=start, beta=cfg.dpo_beta, lora=lora, lr=cfg.lr, seed=cfg.seed + rnd["round"],
                             out_dir=str(out), threads=threads, dtype=cfg.dtype)
        pairs = preference_examples(store, collect_pairs(store, None, judge_weight=cfg.judge_weight))
        res = _track(store, "dpo", rnd["round"], pcfg, out, lambda: dpo.train(pcfg, pairs, resume=again))
    last = res.metrics.get("last", {})
    say(f"  {cfg.algorithm}: {res.model_dir}" + (f" (last batch: reward {last['reward']:.3f}, KL {last['kl']:.2f} nats)"
                                                if "reward" in last and "kl" in last else ""))
    return {"model": str(res.model_dir), "run": str(out)}


def _eval(ws, cfg: LoopConfig, state, rnd, again, say, save) -> dict:
    import torch

    from tether.eval.compare import compare
    from tether.feedback.gold import gold_score

    store = ws.store()
    torch.set_num_threads(ws.config.threads or os.cpu_count() or 1)
    out = ws.new_run_dir("eval")
    policy, sft = rnd["policy"]["model"], state["sft"]
    run_id = store.start_run("eval", rnd["round"], {"policy": policy, "reference": sft, "split": cfg.eval_split,
                                                     "samples": cfg.eval_samples, "loop_round": rnd["round"]}, str(out))
    try:
        report = compare(policy, sft, store.prompts(cfg.eval_split), samples=cfg.eval_samples,
                         temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                         reward_model=rnd["rm"]["model"], gold_fn=gold_score, reference_cache=_REFERENCE_ANSWERS,
                         batch_size=64, dtype=cfg.dtype)
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    report["round"] = rnd["round"]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    store.finish_run(run_id, "done", {k: v for k, v in report.items() if k != "answers"})
    summary = {"report": str(out / "report.json"), "gold_win_rate": report["gold"]["win_rate"],
               "gold_ci": [report["gold"]["ci_low"], report["gold"]["ci_high"]],
               "gold": report["policy"].get("gold"), "sft_gold": report["reference"].get("gold"),
               "reward": report["policy"].get("reward"), "kl": report["policy"].get("kl")}
    say(f"  gold win rate vs SFT {summary['gold_win_rate']:.1%} (95 % CI {summary['gold_ci'][0]:.1%}-"
        f"{summary['gold_ci'][1]:.1%}); gold {summary['gold']:.3f} vs {summary['sft_gold']:.3f}; "
        f"KL to SFT {summary['kl']:.2f} nats")
    return summary


def _track(store, stage: str, round: int, cfg, out: Path, fn):
    """`fn` as a database run row of `stage`, tagged with the loop round (tether.commands.common.tracked)."""
    from tether.commands.common import tracked

    return tracked(store, stage, round, {k: str(v) for k, v in vars(cfg).items()}, out, fn)


_REFERENCE_ANSWERS: dict = {}  # the starting policy's held-out answers, sampled once per process (same seeds)
STEP_FNS = {"sample": _sample, "feedback": _feedback, "rm": _rm, "policy": _policy, "eval": _eval}
