"""The `tether` command: one thin command per stage, parsing options into the stage's config.

Errors a user can cause print as one clear line (no traceback) and exit with status 1.
Model outputs are untrusted text: they are printed as rich `Text`, never parsed as markup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from tether.commands.common import (DtypeOpt, WorkspaceOpt, console, counts_text, latest_model, launched, parse_rounds,
                                    quiet_transformers, resolve_dtype, shared_run_dir, user_errors)
from tether.errors import TetherError

app = typer.Typer(help="tether: RLHF end to end, from human feedback to a better policy.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
import_app = typer.Typer(help="Load prompts, demonstrations or preference pairs into the workspace.",
                         no_args_is_help=True)
export_app = typer.Typer(help="Write workspace data out in TRL's formats.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")

@app.command()
@user_errors
def init(directory: Path = typer.Argument(..., help="Folder for the new workspace."),
         database: Optional[str] = typer.Option(None, help="SQLAlchemy URL, e.g. postgresql://user@host/db "
                                                "(default: SQLite tether.db in the workspace)."),
         policy: Optional[str] = typer.Option(None, help="'bundled' (default), a hub id, or a local folder.")):
    """Make a workspace: tether.yaml, the database and runs/."""
    from tether.workspace import init_workspace

    ws = init_workspace(directory, database, policy)
    console.print(Text(f"workspace ready: {ws.root} (database: {ws.config.database}, policy: {ws.config.policy})"))


def _report_import(res, what: str) -> None:
    parts = [f"{res.rows} {what} read from {res.path}", f"{res.prompts_added} new prompts"]
    if res.prompts_existing:
        parts.append(f"{res.prompts_existing} prompts already stored")
    if res.responses_added:
        parts.append(f"{res.responses_added} responses")
    if res.comparisons_added:
        parts.append(f"{res.comparisons_added} comparisons")
    console.print(Text("; ".join(parts)))


@import_app.command("prompts")
@user_errors
def import_prompts(file: Path, split: str = typer.Option("train", help="Split for rows that name none."),
                   workspace: Path = WorkspaceOpt):
    """Prompts from .txt (one per line), .jsonl ({"prompt": ...}) or .csv (a 'prompt' column)."""
    from tether.data.io import import_prompts as do
    from tether.workspace import open_workspace

    _report_import(do(open_workspace(workspace).store(), file, split), "prompts")


@import_app.command("demos")
@user_errors
def import_demos(file: Path, split: str = typer.Option("train"),
                 labeler: Optional[str] = typer.Option(None, help="Credit the demonstrations to this labeler."),
                 workspace: Path = WorkspaceOpt):
    """Demonstrations for SFT: JSONL rows {"messages": [...]} ending with the assistant's answer."""
    from tether.data.io import import_demonstrations
    from tether.workspace import open_workspace

    _report_import(import_demonstrations(open_workspace(workspace).store(), file, split, labeler), "demonstrations")


@import_app.command("prefs")
@user_errors
def import_prefs(file: Path, split: str = typer.Option("train"),
                 labeler: Optional[str] = typer.Option(None, help="Credit the comparisons to this labeler."),
                 round: int = typer.Option(0, help="Round to tag the comparisons with."),
                 workspace: Path = WorkspaceOpt):
    """Preference pairs in TRL's format (prompt/chosen/rejected; standard or conversational JSONL)."""
    from tether.data.io import import_preferences
    from tether.workspace import open_workspace

    _report_import(import_preferences(open_workspace(workspace).store(), file, split, labeler, round), "pairs")


@import_app.command("feedback")
@user_errors
def import_feedback(file: Path, workspace: Path = WorkspaceOpt):
    """Labels on stored responses, JSONL: {"kind": "comparison"|"ranking"|"rating"|"thumb"|"flaws"|"critique",
    "labeler": NAME, ...}. Every line is checked; one bad line and nothing is stored."""
    from tether.data.feedback import import_feedback as do
    from tether.workspace import open_workspace

    counts = do(open_workspace(workspace).store(), file)
    console.print(Text(f"stored from {file}: {counts_text(counts)}"))


@export_app.command("prefs")
@user_errors
def export_prefs(out: Path, format: str = typer.Option("auto", help="auto, standard or conversational."),
                 round: Optional[int] = typer.Option(None, help="Only comparisons of this round."),
                 workspace: Path = WorkspaceOpt):
    """Stored comparisons as TRL preference JSONL (load with datasets.load_dataset("json", ...))."""
    from tether.data.io import export_preferences
    from tether.workspace import open_workspace

    if format not in ("auto", "standard", "conversational"):
        raise TetherError(f"--format: expected auto, standard or conversational, got {format!r}")
    res = export_preferences(open_workspace(workspace).store(), out, format, round)
    console.print(Text(f"{res.written} pairs written to {res.path} ({res.format} format); "
                       f"not written: {res.ties} ties, {res.cant_tell} can't-tell"))


@app.command()
@user_errors
def sample(k: Optional[int] = typer.Option(None, "--k", help="Responses per prompt."),
           temperature: Optional[float] = typer.Option(None),
           top_p: Optional[float] = typer.Option(None, "--top-p"),
           max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
           batch_size: Optional[int] = typer.Option(None, "--batch-size"),
           seed: Optional[int] = typer.Option(None),
           split: Optional[str] = typer.Option(None, help="Prompts of this split (default from tether.yaml)."),
           policy: Optional[str] = typer.Option(None, help="Model to sample from (default from tether.yaml)."),
           round: Optional[int] = typer.Option(None, help="Round to tag responses with (default from tether.yaml)."),
           workspace: Path = WorkspaceOpt):
    """Generate K responses per prompt with the policy and store them with their round.

    Running it again tops each prompt up to K responses for this policy and round (a killed run
    resumes); settings come from tether.yaml's `sample:` section, overridden by these options."""
    from tether.config import with_overrides
    from tether.recipes import sample as recipe
    from tether.workspace import open_workspace

    quiet_transformers()
    ws = open_workspace(workspace)
    cfg = with_overrides(ws.config.sample, dict(k=k, temperature=temperature, top_p=top_p, seed=seed,
                                                max_new_tokens=max_new_tokens, batch_size=batch_size, split=split))
    res = recipe.run(ws, cfg, policy=policy, round=round)
    if res.responses_added == 0:
        console.print(Text(f"nothing to do: all {res.prompts_complete} prompts already have {cfg.k} responses"))
        return
    console.print(Text(f"{res.responses_added} responses to {res.prompts_sampled} prompts stored in "
                       f"{ws.database_url if ws.database_url.startswith('sqlite') else 'the database'} "
                       f"(run {res.run_id}); {res.new_tokens} new tokens in {res.seconds:.1f} s = "
                       f"{res.tokens_per_s:.1f} tokens/s; {res.finished_fraction:.0%} ended with EOS"))


@app.command()
@user_errors
def label(simulated: bool = typer.Option(False, "--simulated", help="Use simulated labelers (no people)."),
          items: Optional[int] = typer.Option(None, help="Labeling items (default: one per prompt)."),
          overlap: int = typer.Option(3, help="Labelers per item."),
          labelers: int = typer.Option(20, help="Size of the simulated pool."),
          adversarial: int = typer.Option(3, help="Simulated labelers who flip every answer."),
          random_labelers: int = typer.Option(2, "--random", help="Simulated labelers who answer at random."),
          seed: int = typer.Option(0),
          round: Optional[int] = typer.Option(None, help="Round whose samples to label (default: tether.yaml)."),
          workspace: Path = WorkspaceOpt):
    """Collect feedback on the round's samples. With --simulated, a pool of simulated labelers
    (careful, noisy, length-biased, adversarial, random) judged by the hidden gold scorer answers
    pairwise, ranking, rating, thumbs and flaw questions."""
    from tether.feedback.simulate import SimulationConfig, simulate_feedback
    from tether.workspace import open_workspace

    if not simulated:
        raise TetherError("labeling by people runs in the web app, which is not built yet; "
                          "use --simulated for simulated labelers")
    ws = open_workspace(workspace)
    cfg = SimulationConfig(labelers=labelers, adversarial=adversarial, random=random_labelers, overlap=overlap,
                           items=items, seed=seed)
    counts = simulate_feedback(ws.store(), cfg, ws.config.round if round is None else round)
    console.print(Text(f"stored: {counts_text(counts)}"))


@app.command()
@user_errors
def rm(model: Optional[str] = typer.Option(None, help="Start from this model (default: the workspace policy)."),
       heads: int = typer.Option(1, help="Ensemble heads (each on its own bootstrap resample)."),
       lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Train LoRA adapters of this rank (and the head)."),
       train_layers: Optional[int] = typer.Option(None, "--train-layers", help="Train only the top N layers "
                                                  "(and the head): much cheaper on a CPU."),
       epochs: int = typer.Option(1), batch_size: int = typer.Option(8, "--batch-size", help="Pairs per micro-batch."),
       by_prompt: bool = typer.Option(True, "--by-prompt/--by-pair", help="All pairs of a prompt in one micro-batch, "
                                      "each distinct answer forwarded once (default), or pairs batched alone."),
       lr: Optional[float] = typer.Option(None, help="Default 1e-5 (full) or 1e-4 (LoRA)."),
       max_length: int = typer.Option(512, "--max-length"),
       labelers: str = typer.Option("downweight", help="Flagged labelers: downweight, exclude or keep."),
       judge_weight: float = typer.Option(1.0, "--judge-weight", help="Weight of AI-judge labels (0: leave out)."),
       regression_weight: float = typer.Option(0.0, "--regression-weight", help="Also regress the reward on each "
                                               "rated response's normalised 1-5 rating, with this weight (with no "
                                               "pairs at all, ratings are regressed alone)."),
       rounds: Optional[str] = typer.Option(None, help="Comma-separated rounds of feedback (default: all)."),
       dtype: str = DtypeOpt,
       resume: bool = typer.Option(False, help="Continue the latest rm run from its checkpoint."),
       workspace: Path = WorkspaceOpt):
    """Train a reward model on all stored feedback (every kind, as weighted pairs)."""
    from tether.feedback.collect import collect_pairs, policy_samples, preference_examples, rating_examples
    from tether.models import LoraSettings
    from tether.recipes import rm as recipe
    from tether.workspace import open_workspace

    quiet_transformers()
    if labelers not in ("downweight", "exclude", "keep"):
        raise TetherError(f"--labelers: expected downweight, exclude or keep, got {labelers!r}")
    round_list = parse_rounds(rounds)
    ws = open_workspace(workspace)
    store = ws.store()
    collected = collect_pairs(store, round_list, labeler_policy=labelers, judge_weight=judge_weight)
    for f in collected.flags:
        console.print(Text(f"flagged labeler {collected.labelers.get(f.labeler, f.labeler)}: {f.reason} "
                           f"({f.value:.2f} over {f.n})"))
    console.print(Text(f"{len(collected.pairs)} pairs ({', '.join(f'{n} from {k}s' for k, n in collected.by_kind.items())}); "
                       f"{collected.n_ties} ties and {collected.n_cant_tell} can't-tell carry no preference"))
    pairs = preference_examples(store, collected)
    ratings = rating_examples(store, collected, round_list) if regression_weight > 0 or not pairs else []
    if not pairs and ratings:
        console.print(Text(f"no preference pairs: a regression on {len(ratings)} normalised ratings"))
    elif ratings:
        console.print(Text(f"plus a regression on {len(ratings)} normalised ratings (weight {regression_weight})"))
    out = shared_run_dir(ws, "rm", resume)  # under `accelerate launch`: one folder, picked by the main process
    main = launched()[0] == 0
    cfg = recipe.RMConfig(model=model or ws.config.policy, num_heads=heads, epochs=epochs, batch_size=batch_size,
                          by_prompt=by_prompt, lr=lr, max_length=max_length, dtype=resolve_dtype(dtype), threads=ws.config.threads or os.cpu_count(),
                          lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r else None, train_layers=train_layers,
                          regression_weight=regression_weight or 1.0, out_dir=str(out))
    run_id = store.start_run("rm", ws.config.round, {k: str(v) for k, v in vars(cfg).items()}, str(out)) if main else None
    try:
        res = recipe.train(cfg, pairs, ratings=ratings or None, normalise_on=policy_samples(store, round_list),
                           resume=resume)
    except BaseException:
        if main:
            store.finish_run(run_id, "failed")
        raise
    if not main:  # the main process records and reports the run
        return
    store.finish_run(run_id, "done", res.metrics)
    m = res.metrics
    held = (f"held-out accuracy {m['eval_accuracy']:.3f} on {m['eval_pairs']} pairs, ECE {m['eval_ece']:.3f}"
            if "eval_accuracy" in m else "")
    if "eval_mse" in m:
        held += (", " if held else "") + (f"held-out ratings: MSE {m['eval_mse']:.3f}, Spearman "
                                          f"{m['eval_spearman']:.3f} on {m['eval_ratings']}")
    console.print(Text(f"{held}; reward model: {res.model_dir}" if held else f"reward model: {res.model_dir}"))


@app.command()
@user_errors
def score(model: Optional[Path] = typer.Option(None, help="Reward model folder (default: the latest runs/rm-*/model)."),
          rounds: Optional[str] = typer.Option(None, help="Comma-separated rounds (default: all)."),
          gold: bool = typer.Option(True, help="Also score with the gold scorer and report agreement."),
          split: Optional[str] = typer.Option(None, help="Only responses to prompts of this split (e.g. 'eval': "
                                              "prompts the reward model never saw; default: all)."),
          file: Optional[Path] = typer.Option(None, "--file", help="Score this .jsonl file instead of the stored "
                                              "samples: {\"prompt\": text or messages, \"response\": text, "
                                              "\"finished\": bool (optional)} per line."),
          out: Optional[Path] = typer.Option(None, help="Write one JSON line per response here."),
          workspace: Path = WorkspaceOpt):
    """Score the stored samples (or --file) with a reward model (normalised reward and ensemble spread).

    With the gold scorer (simulated runs), it reports the reward model's pairwise agreement with gold
    and, beside it, the labelers' own agreement with gold on every pair they labelled."""
    import json

    from tether.eval.scoring import gold_agreement, labelers_vs_gold, score_rows, stored_responses
    from tether.reward import load_reward_model
    from tether.workspace import open_workspace

    quiet_transformers()
    ws = open_workspace(workspace) if model is None or file is None else None  # a file and a model need none
    if model is None:
        model = latest_model(ws.root, "rm")
        if model is None:
            raise TetherError("no reward model in this workspace: train one with `tether rm`, or pass --model")
    store = ws.store() if ws is not None else None
    if file is not None:
        from tether.data.io import read_responses

        if split or rounds:
            raise TetherError("--file scores the file's rows: --split and --rounds apply to stored samples only")
        rows = read_responses(file)
        ids: dict[str, int] = {}
        for r in rows:  # same-prompt pairs for the gold agreement: one id per distinct prompt
            r["prompt_id"] = ids.setdefault(json.dumps(r["messages"]), len(ids))
    else:
        rows = stored_responses(store, parse_rounds(rounds), split=split)
    if not rows:
        raise TetherError("no sampled responses to score" + (f" in split '{split}': run `tether sample --split {split}`"
                                                             if split else ": run `tether sample` first"))
    rm_model, tok = load_reward_model(str(model))
    score_rows(rows, rm_model, tok)
    rewards = [r["reward"] for r in rows]
    console.print(Text(f"{len(rows)} responses{f' from {file}' if file else ''} scored by {model}: mean reward "
                       f"{sum(rewards) / len(rows):.3f}"))
    if gold:
        from tether.feedback.gold import gold_score

        for r in rows:
            r["gold"] = gold_score(r["prompt"], r["response"], r["finished"])
        g = gold_agreement(rows)
        where = f" of split '{split}'" if split else ""
        console.print(Text(f"reward model vs the gold scorer: pairwise accuracy {g['accuracy']:.3f} over {g['pairs']} "
                           f"same-prompt pairs{where}, Spearman {g['spearman']:.3f}"))
        labelled = None if file else labelers_vs_gold(store, parse_rounds(rounds))
        if labelled and labelled["pairs"]:
            console.print(Text(f"labelers vs the gold scorer: {labelled['accuracy']:.3f} over {labelled['pairs']} "
                               f"labelled pairs ({labelled['weighted']:.3f} weighted as the reward model trains)"))
    if out:
        out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "messages"}) + "\n" for r in rows))
        console.print(Text(f"scores written to {out}"))


@app.command()
@user_errors
def status(workspace: Path = WorkspaceOpt):
    """What the workspace holds: rows per table, schema revision, settings."""
    from tether.workspace import open_workspace

    ws = open_workspace(workspace)
    store = ws.store()
    table = Table(title=f"workspace {ws.root}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in store.counts().items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(Text(f"schema revision {store.revision()}; policy {ws.config.policy}; round {ws.config.round}"))


from tether.commands.control import control  # noqa: E402
from tether.commands.dpo import dpo  # noqa: E402
from tether.commands.evaluate import bon, evaluate  # noqa: E402
from tether.commands.judge import judge  # noqa: E402
from tether.commands.loop import demo, loop  # noqa: E402
from tether.commands.report import report  # noqa: E402
from tether.commands.serve import labelers_app, serve, tasks_app  # noqa: E402
from tether.commands.serve_model import serve_model  # noqa: E402
from tether.commands.online import grpo, rloo  # noqa: E402
from tether.commands.ppo import ppo  # noqa: E402
from tether.commands.sft import sft  # noqa: E402

app.command()(sft)
app.command()(ppo)
app.command()(dpo)
app.command()(rloo)
app.command()(grpo)
app.command("eval")(evaluate)
app.command()(bon)
app.command()(loop)
app.command()(demo)
app.command()(judge)
app.command()(report)
app.command()(control)
app.command()(serve)
app.command("serve-model")(serve_model)
app.add_typer(labelers_app, name="labelers")
app.add_typer(tasks_app, name="tasks")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
