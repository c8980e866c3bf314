"""report.html: one self-contained page about a workspace's runs, evaluations and labelers.

`write_report(workspace_root, out_path)` reads only what the stages leave behind:
- `runs/<ppo|rloo|grpo|dpo>-N/metrics.jsonl` (written by `MetricsLog` and the DPO recipe): per
  logged update "reward" (reward-model score), "gold" (hidden gold scorer), "kl" (k1, nats per
  sequence, raw logits), and held-out records with "eval_reward", "eval_gold", "eval_kl"; DPO logs
  "loss", "accuracy", "margin" and their "eval_" twins;
- `runs/eval-N/report.json` (`tether eval`, see `tether.eval.compare`): gold win rate with its 95 %
  interval, each side's mean gold / reward / KL, and every answer; the round comes from the run's
  row in the database when there is one;
- the database's comparisons and rankings, for labeler agreement (`tether.feedback.agreement`).

Over-optimisation (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization") is drawn as
proxy reward and gold score against d = sqrt(KL), one point per logged update or evaluation. A k1
estimate of KL can be slightly negative on few samples; it is clipped at 0 before the square root.

Plots are PNGs drawn with matplotlib's Agg canvas (no display, no global pyplot state) and inlined
as base64; every piece of text from the workspace (model outputs, names, paths) is HTML-escaped,
and the page's Content-Security-Policy allows no scripts at all.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

ONLINE = ("ppo", "rloo", "grpo")
STAGES = ONLINE + ("dpo",)
# (panel title, training key, held-out key)
PANELS = (("proxy reward (reward model)", "reward", "eval_reward"), ("gold score (hidden scorer)", "gold", "eval_gold"),
          ("KL to reference (nats/seq)", "kl", "eval_kl"), ("DPO loss", "loss", "eval_loss"),
          ("preference accuracy", "accuracy", "eval_accuracy"), ("DPO margin", "margin", "eval_margin"))
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;vertical-align:top}
th{background:#f3f3f3}.pair td{width:50%;white-space:pre-wrap;font-size:.9em}.note{color:#666}
.warn{background:#fff3cd;border-left:4px solid #c90;padding:.4em .8em}
img{max-width:100%}h2{border-bottom:1px solid #ddd;margin-top:2em}"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, fmt: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_index(p: Path) -> int:
    tail = p.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_metrics(path: Path, notes: list[str]) -> list[dict]:
    """The records of a metrics.jsonl; unreadable lines (a run killed mid-write) are noted and skipped."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{path}, line {n}: not valid JSON, skipped")
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            out.append(rec)
        else:
            notes.append(f"{path}, line {n}: no numeric 'step', skipped")
    return out


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def runs_section(runs: dict[str, list[dict]]) -> str:
    if not runs:
        return '<p class="note">No ppo, rloo, grpo or dpo runs with a metrics.jsonl under runs/.</p>'
    parts, rows = [], []
    for name, recs in runs.items():
        panels = [(t, k, e) for t, k, e in PANELS if _series(recs, k)[0] or _series(recs, e)[0]]
        last = next((r for r in reversed(recs) if "reward" in r or "loss" in r), {})
        rows.append([name, len(recs), _num(max((r["step"] for r in recs), default=None), ".0f"),
                     _num(last.get("reward")), _num(last.get("gold")), _num(last.get("kl")), _num(last.get("loss"))])
        if not panels:
            continue
        fig = _figure(4.2 * len(panels), 3.0)
        for i, (title, key, ekey) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            x, y = _series(recs, key)
            if x:
                ax.plot(x, y, "-", lw=1.2, label="training batch")
            x, y = _series(recs, ekey)
            if x:
                ax.plot(x, y, "o--", ms=4, label="held-out")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("update" if name.split("-")[0] in ONLINE else "step", fontsize=8)
            ax.legend(fontsize=7)
            ax.grid(alpha=.3)
        parts.append(f"<h3>{esc(name)}</h3>{_png(fig)}")
    table = _table(["run", "records", "last step", "reward", "gold", "KL (nats/seq)", "loss"], rows)
    return table + "".join(parts)


TREND = 5  # updates per point of the over-optimisation trend line


def trend(pts: list[tuple[float, float]], n: int = TREND) -> tuple[list[float], list[float]]:
    """Binned means along x: the points sorted by x (sqrt KL), then the means of each run of n of them,
    (x means, y means); a last partial run is dropped. KL wanders from update to update, so binning by KL,
    not by update, is what draws score as a function of distance from the reference (Gao et al. 2022)."""
    pts = sorted(pts)
    groups = [pts[i:i + n] for i in range(0, len(pts) - n + 1, n)]
    return [sum(p[0] for p in g) / n for g in groups], [sum(p[1] for p in g) / n for g in groups]


def overoptimised(pts: list[tuple[float, float, float]], n: int = TREND, drop: float = 0.1) -> str | None:
    """A verdict on one run's (sqrt KL, proxy reward, gold) points, or None: binned by KL as `trend`
    does, over-optimisation is the gold trend falling from its peak bin to the last bin by more than
    `drop` of the peak's size while the proxy trend rises over the same span (Gao et al. 2022, Fig. 1)."""
    xs, proxy = trend([(x, r) for x, r, _ in pts], n)
    gold = trend([(x, g) for x, _, g in pts], n)[1]
    if len(xs) < 2:
        return None
    peak = max(range(len(gold)), key=gold.__getitem__)
    fell = gold[peak] - gold[-1]
    if peak == len(xs) - 1 or fell <= drop * abs(gold[peak]) or proxy[-1] <= proxy[peak]:
        return None
    return (f"gold peaked at {gold[peak]:.3f} (sqrt KL {xs[peak]:.2f}) and fell to {gold[-1]:.3f} (sqrt KL "
            f"{xs[-1]:.2f}) while the proxy reward rose from {proxy[peak]:.3f} to {proxy[-1]:.3f}")


def overopt_section(runs: dict[str, list[dict]], evals: list[dict]) -> str:
    """Proxy reward and gold against sqrt(KL): one point per logged update or evaluation."""
    points = []  # (label, kind, sqrt_kl, reward, gold)
    for name, recs in runs.items():
        if name.split("-")[0] not in ONLINE:
            continue
        for r in recs:
            for kind, (kk, rk, gk) in (("update", ("kl", "reward", "gold")), ("held-out", ("eval_kl", "eval_reward",
                                                                                            "eval_gold"))):
                if isinstance(r.get(kk), (int, float)) and (r.get(rk) is not None or r.get(gk) is not None):
                    points.append((name, kind, math.sqrt(max(r[kk], 0.0)), r.get(rk), r.get(gk)))
    for e in evals:
        pol = e["report"].get("policy", {})
        if isinstance(pol.get("kl"), (int, float)):
            points.append((e["name"], "eval", math.sqrt(max(pol["kl"], 0.0)), pol.get("reward"), pol.get("gold")))
    if not points:
        return '<p class="note">No logged KL with a reward or gold score yet (online runs or tether eval).</p>'
    fig = _figure(9, 3.6)
    for i, (col, title) in enumerate(((3, "proxy reward (reward model)"), (4, "gold score (hidden scorer)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for label in dict.fromkeys(p[0] for p in points):
            for kind, marker in (("update", "."), ("held-out", "s"), ("eval", "*")):
                pts = [(p[2], p[col]) for p in points if p[0] == label and p[1] == kind and p[col] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker, ls="", ms=7 if marker != "." else 5, label=f"{label} ({kind})")
                if kind == "update" and len(pts) >= 2 * TREND:  # one batch is noisy: the trend is what matters
                    ax.plot(*trend(pts), "-", lw=1.5, color=ax.lines[-1].get_color(), label=f"{label} (mean of {TREND}, by KL)")
        ax.set_xlabel("sqrt(KL to reference), sqrt(nats)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=.3)
        ax.legend(fontsize=6)
    warnings = []
    for label in dict.fromkeys(p[0] for p in points):
        verdict = overoptimised([(p[2], p[3], p[4]) for p in points if p[0] == label and p[1] == "update"
                                 and p[3] is not None and p[4] is not None])
        if verdict:
            warnings.append(f'<p class="warn"><b>Over-optimisation in {esc(label)}</b>: {esc(verdict)} (means of '
                            f"{TREND} updates, binned by KL). The policy is exploiting the reward model: raise the KL "
                            "coefficient, stop earlier, or retrain the reward model on the policy's new answers.</p>")
    return (_png(fig) + "".join(warnings) + '<p class="note">Gao et al. 2022: a proxy reward that keeps rising '
            "while the gold score levels off or falls as the policy moves away from the reference is "
            "over-optimisation.</p>")


def evals_section(evals: list[dict]) -> str:
    if not evals:
        return '<p class="note">No runs/eval-N/report.json yet (run <code>tether eval</code>).</p>'
    rows, xs, ys, lo, hi, labels = [], [], [], [], [], []
    for i, e in enumerate(evals):
        r, g = e["report"], e["report"].get("gold") or {}
        pol, ref = r.get("policy", {}), r.get("reference", {})
        rows.append([e["name"], "-" if e["round"] is None else e["round"], pol.get("policy", "?"), ref.get("policy", "?"),
                     _num(g.get("win_rate")), f"{_num(g.get('ci_low'))}-{_num(g.get('ci_high'))}", g.get("n", "-"),
                     _num(pol.get("gold")), _num(ref.get("gold")), _num(pol.get("kl"))])
        if isinstance(g.get("win_rate"), (int, float)):
            xs.append(i)
            ys.append(g["win_rate"])
            lo.append(g["win_rate"] - g.get("ci_low", g["win_rate"]))
            hi.append(g.get("ci_high", g["win_rate"]) - g["win_rate"])
            labels.append(e["name"] + ("" if e["round"] is None else f"\nround {e['round']}"))
    out = _table(["eval", "round", "policy", "reference", "gold win rate", "95 % CI", "pairs", "gold (policy)",
                  "gold (reference)", "KL (nats/seq)"], rows)
    if xs:
        fig = _figure(max(4.0, 1.2 * len(xs) + 2), 3.0)
        ax = fig.add_subplot(1, 1, 1)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4)
        ax.axhline(0.5, color="grey", lw=.8, ls="--")
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("gold win rate vs reference", fontsize=8)
        ax.grid(alpha=.3)
        out += _png(fig)
    return out


def examples_section(evals: list[dict], n: int) -> str:
    latest = next((e for e in reversed(evals) if e["report"].get("answers")), None)
    if latest is None:
        return '<p class="note">No evaluation answers to show.</p>'
    r = latest["report"]
    parts = [f"<p>From {esc(latest['name'])}: the first {min(n, len(r['answers']))} of {len(r['answers'])} answers, "
             f"policy <b>{esc(r.get('policy', {}).get('policy', '?'))}</b> against reference "
             f"<b>{esc(r.get('reference', {}).get('policy', '?'))}</b>.</p>"]
    for a in r["answers"][:n]:
        cells = []
        for side in ("policy", "reference"):
            tag = f"gold {_num(a.get(f'{side}_gold'))}, reward {_num(a.get(f'{side}_reward'))}"
            if a.get(f"{side}_finished") is False:
                tag += ", cut off"
            cells.append(f"<td><b>{side}</b> <span class=note>({esc(tag)})</span>\n{esc(a.get(f'{side}_text', ''))}</td>")
        parts.append(f'<table class="pair"><tr><th colspan="2">{esc(a.get("prompt", ""))}</th></tr>'
                     f"<tr>{''.join(cells)}</tr></table>")
    return "".join(parts)


def agreement_section(store) -> str:
    """Agreement of the stored pairwise judgements (comparisons and ranking pairs)."""
    from sqlalchemy import select

    from tether.data import schema as S
    from tether.feedback.agreement import (agreement_by_group, flag_labelers, krippendorff_alpha,
                                           leave_one_out_agreement, raw_agreement)
    from tether.feedback.collect import pair_labels

    with store.session() as s:
        comparisons = list(s.scalars(select(S.Comparison)))
        rankings = list(s.scalars(select(S.Ranking)))
        labels, durations = pair_labels(comparisons, rankings)  # reads ranking items while the session is open
        who = {i: (name, role) for i, name, role in s.execute(select(S.Labeler.id, S.Labeler.name, S.Labeler.role))}
    decisive = {k: {lab: v for lab, v in d.items() if v in ("first", "second")} for k, d in labels.items()}
    if not any(len(d) >= 2 for d in decisive.values()):
        return '<p class="note">No pair has decisive judgements from two or more labelers yet.</p>'
    loo = leave_one_out_agreement(decisive)
    flags = {f.labeler: f.reason for f in flag_labelers(decisive, durations)}
    by_role = agreement_by_group(decisive, {lab: {"role": who[lab][1]} for lab in who}, "role")
    out = (f"<p>{len(comparisons)} comparisons and {len(rankings)} rankings on {len(labels)} response pairs. "
           f"Decisive answers only (ties and can't-tell left out): raw agreement {raw_agreement(decisive):.3f}, "
           f"Krippendorff's alpha (nominal) {_num(krippendorff_alpha(decisive, 'nominal'))}.</p>")
    out += _table(["role", "leave-one-out agreement", "labelers", "labels"],
                  [[role, _num(a), n_lab, n] for role, (a, n_lab, n) in sorted(by_role.items(), key=lambda t: str(t[0]))])
    rows = sorted(((who.get(lab, (str(lab), "?")), a, n, flags.get(lab, "")) for lab, (a, n) in loo.items()),
                  key=lambda t: (t[1] if not math.isnan(t[1]) else -1.0))
    out += _table(["labeler", "role", "agreement with the others' majority", "pairs", "flag"],
                  [[nm, role, _num(a), n, f] for (nm, role), a, n, f in rows])
    shown = [r for r in rows if r[2] > 0]
    if shown:
        fig = _figure(7, max(2.0, 0.22 * len(shown) + 1))
        ax = fig.add_subplot(1, 1, 1)
        colours = {"simulated": "tab:blue", "ai_judge": "tab:orange", "labeler": "tab:green", "import": "tab:purple"}
        ax.barh(range(len(shown)), [r[1] for r in shown], color=[colours.get(r[0][1], "grey") for r in shown])
        ax.set_yticks(range(len(shown)), [r[0][0] for r in shown], fontsize=6)
        ax.axvline(0.5, color="grey", lw=.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel("leave-one-out agreement (blue simulated, orange AI judge, green people)", fontsize=8)
        out += _png(fig)
    return out


def _eval_reports(root: Path, rounds: dict[str, int], notes: list[str]) -> list[dict]:
    out = []
    for d in sorted((root / "runs").glob("eval-*"), key=_run_index):
        path = d / "report.json"
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            notes.append(f"{path}: not valid JSON ({e.msg}), skipped")
            continue
        if isinstance(report, dict):
            out.append({"name": d.name, "round": rounds.get(str(d.resolve())), "report": report})
    return out


def write_report(workspace_root: str | Path, out_path: str | Path, examples: int = 6) -> Path:
    """Write report.html for the workspace at `workspace_root` to `out_path`; returns the path.

    Works on a bare folder with a runs/ directory too (no database: no agreement section, no rounds)."""
    from tether.errors import TetherError

    root, out = Path(workspace_root).resolve(), Path(out_path)
    if not root.is_dir():
        raise TetherError(f"{root}: no such workspace folder")
    notes: list[str] = []
    store, rounds = None, {}
    if (root / "tether.yaml").is_file():
        from sqlalchemy import select

        from tether.data import schema as S
        from tether.workspace import open_workspace

        try:
            store = open_workspace(root).store()
            with store.session() as s:
                rounds = {str(Path(p).resolve()): r for p, r in s.execute(
                    select(S.Run.path, S.Run.round).where(S.Run.stage == "eval", S.Run.path.is_not(None)))}
        except TetherError as e:
            notes.append(f"database not read: {e}")
            store = None
    runs = {}
    for stage in STAGES:
        for d in sorted((root / "runs").glob(f"{stage}-*"), key=_run_index):
            if (d / "metrics.jsonl").is_file() and d.name.rsplit("-", 1)[-1].isdigit():
                runs[d.name] = read_metrics(d / "metrics.jsonl", notes)
    evals = _eval_reports(root, rounds, notes)
    try:
        agreement = agreement_section(store) if store is not None else '<p class="note">No database found.</p>'
    finally:
        if store is not None:
            store.close()
    sections = [("Training runs", runs_section(runs)), ("Win rate per evaluation", evals_section(evals)),
                ("Over-optimisation: proxy vs gold against sqrt(KL)", overopt_section(runs, evals)),
                ("Labeler agreement", agreement), ("Example answers, side by side", examples_section(evals, examples))]
    if notes:
        sections.append(("Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>tether report: {esc(root.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>tether report: {esc(root.name)}</h1><p class=\"note\">{esc(root)}, {stamp}</p>"
            + "".join(f"<h2>{esc(title)}</h2>{body}" for title, body in sections) + "</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


__all__ = ["read_metrics", "write_report"]
