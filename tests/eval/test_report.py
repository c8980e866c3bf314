"""report.html from a workspace with fake metrics, eval reports and feedback: escaped text, inline PNGs."""

import base64
import json
import re

import pytest
import torch

from tether.eval.report import read_metrics, write_report

torch.set_num_threads(1)
EVIL = "<script>alert(1)</script>"


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _eval_report(win, kl, answers):
    return {"policy": {"policy": "runs/ppo-1/model", "gold": 0.7, "reward": 1.2, "kl": kl, "length": 30, "eos": 0.9},
            "reference": {"policy": "bundled", "gold": 0.5, "reward": 0.0, "length": 50, "eos": 0.4},
            "gold": {"win_rate": win, "ci_low": win - 0.1, "ci_high": win + 0.1, "wins": 6, "ties": 0, "losses": 4,
                     "n": 10},
            "prompts": 5, "samples": 2, "answers": answers}


@pytest.fixture
def ws(tmp_path):
    from tether.data import schema as S
    from tether.data.feedback import record_comparison
    from tether.workspace import init_workspace

    w = init_workspace(tmp_path / "ws", policy="bundled")
    runs = w.root / "runs"
    ppo = [{"step": i, "reward": 0.1 * i, "gold": 0.5 + 0.01 * i, "kl": 0.3 * i, "policy_loss": -0.1} for i in range(1, 6)]
    ppo.append({"step": 5, "eval_reward": 0.4, "eval_gold": 0.55, "eval_kl": 1.2, "eval_prompts": 4})
    _jsonl(runs / "ppo-1" / "metrics.jsonl", ppo)
    rloo = [{"step": i, "reward": 0.2 * i, "gold": 0.5, "kl": -0.01 if i == 1 else 0.5 * i} for i in range(1, 4)]
    _jsonl(runs / "rloo-2" / "metrics.jsonl", rloo)
    (runs / "rloo-2" / "metrics.jsonl").open("a").write('{"step": 4, "reward": 0.9, "kl"\n')  # killed mid-write
    _jsonl(runs / "dpo-1" / "metrics.jsonl", [{"step": i, "loss": 0.69 - 0.05 * i, "accuracy": 0.5 + 0.05 * i,
                                               "margin": 0.1 * i} for i in range(1, 5)])
    answers = [{"prompt": "Say hi & wave", "sample": 0, "policy_text": EVIL, "policy_finished": True,
                "policy_gold": 0.9, "policy_reward": 1.0, "reference_text": 'He said "hi" <b>bold</b>',
                "reference_finished": False, "reference_gold": 0.2, "reference_reward": None}]
    for n, (win, kl) in enumerate([(0.55, 2.0), (0.7, 4.0)], start=1):
        d = runs / f"eval-{n}"
        d.mkdir()
        (d / "report.json").write_text(json.dumps(_eval_report(win, kl, answers)))
        w.store().finish_run(w.store().start_run("eval", n - 1, {}, str(d)), "done")
    store = w.store()
    with store.session() as s:
        p, _ = store.get_or_add_prompt(s, "Say hi", None)
        rs = [S.Response(prompt_id=p.id, text=t, policy="pi") for t in ("hi", "hello", "hey", "yo")]
        s.add_all(rs)
        s.flush()
        labs = [store.labeler(s, n, role=r) for n, r in (("alice", "labeler"), ("bob", "labeler"),
                                                          ("<img src=x onerror=alert(2)>", "simulated"))]
        labs.append(store.labeler(s, "ai-judge", role="ai_judge"))
        for i, (a, b) in enumerate([(0, 1), (0, 2), (1, 2), (2, 3)]):
            for j, lab in enumerate(labs):
                choice = "a" if (i + j) % 3 else "b"
                record_comparison(s, lab, rs[a].id, rs[b].id, choice, duration_ms=4000)
    return w


def test_report_is_self_contained_and_escaped(ws, tmp_path):
    out = write_report(ws.root, tmp_path / "out" / "report.html")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "Say hi &amp; wave" in page
    assert not re.search(r"<\s*script", page, re.IGNORECASE) and "<b>bold" not in page and "<img src=x" not in page
    assert "script-src" not in page and "default-src 'none'" in page  # CSP: no scripts at all
    images = re.findall(r'<img alt="plot" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    # ppo-1, rloo-2, dpo-1 curves + win rate + over-optimisation + agreement bars
    assert len(images) == 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing fetched
    for text in ("ppo-1", "rloo-2", "dpo-1", "<td>eval-2</td><td>1</td>", "0.700", "ai_judge", "Krippendorff",
                 "not valid JSON, skipped", "cut off"):
        assert text in page, text


def test_report_of_an_empty_workspace_says_what_is_missing(tmp_path):
    from tether.workspace import init_workspace

    w = init_workspace(tmp_path / "ws", policy="bundled")
    page = write_report(w.root, w.root / "report.html").read_text()
    assert "No ppo, rloo, grpo or dpo runs" in page and "No runs/eval-N/report.json" in page
    assert "data:image/png" not in page
    bare = tmp_path / "bare"
    (bare / "runs").mkdir(parents=True)
    assert "No database found" in write_report(bare, bare / "r.html").read_text()


def test_read_metrics_skips_bad_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "reward": 0.5}\n\nnot json\n{"reward": 2}\n{"step": 2}\n')
    notes = []
    assert [r["step"] for r in read_metrics(p, notes)] == [1, 2]
    assert len(notes) == 2 and "line 3" in notes[0] and "line 4" in notes[1]


def test_report_command(ws, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tether.commands.report import report

    app = typer.Typer()
    app.command()(report)
    app.command("other")(lambda: None)
    r = CliRunner().invoke(app, ["report", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert (ws.root / "report.html").is_file() and "report.html" in r.output
    r = CliRunner().invoke(app, ["report", "-w", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_trend_is_binned_by_kl():
    from tether.eval.report import trend

    pts = [(2.0, 5.0), (0.0, 1.0), (4.0, 100.0), (1.0, 3.0), (3.0, 7.0)]  # (sqrt KL, score) in update order
    assert trend(pts, n=2) == ([0.5, 2.5], [2.0, 6.0])  # sorted by KL; the largest, unpaired, is dropped
    assert trend(pts[:1], n=2) == ([], [])


def test_overoptimisation_verdict():
    """Worked by hand with bins of 2: points (sqrt KL, proxy, gold)."""
    from tether.eval.report import overoptimised

    rising = [(0.0, 0.0, 0.5), (1.0, 0.2, 0.7), (2.0, 0.4, 0.8), (3.0, 0.6, 0.8), (4.0, 0.8, 0.4), (5.0, 1.0, 0.2)]
    # bins: x 0.5 / 2.5 / 4.5, proxy 0.1 / 0.5 / 0.9, gold 0.6 / 0.8 / 0.3: gold peaks in bin 2 and falls by
    # 0.5 > 0.1 * 0.8 while the proxy rises 0.5 -> 0.9
    verdict = overoptimised(rising, n=2)
    assert verdict == ("gold peaked at 0.800 (sqrt KL 2.50) and fell to 0.300 (sqrt KL 4.50) while the proxy "
                       "reward rose from 0.500 to 0.900")
    assert overoptimised(rising[::-1], n=2) == verdict  # binned by KL, not by update order
    assert overoptimised([(x, r, g + x) for x, r, g in rising], n=2) is None  # gold 0.6 / 1.3 / 4.8 still rising
    assert overoptimised([(x, -r, g) for x, r, g in rising], n=2) is None  # proxy fell too: not over-optimisation
    assert overoptimised([(x, r, 0.8 - 0.01 * x) for x, r, _ in rising], n=2) is None  # a 5 % dip is within `drop`
    assert overoptimised(rising[:3], n=2) is None  # one bin: nothing to compare


def test_report_flags_overoptimisation(tmp_path):
    from tether.eval.report import write_report

    run = tmp_path / "runs" / "grpo-1"
    run.mkdir(parents=True)
    gold = [0.7, 0.8, 0.8, 0.75, 0.6, 0.5, 0.4, 0.4, 0.35, 0.35]
    run.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "kl": float(i * i), "reward": 0.1 * i, "gold": g}) + "\n" for i, g in enumerate(gold)))
    html_text = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert "Over-optimisation in grpo-1" in html_text and "gold peaked at 0.730" in html_text
    run.joinpath("metrics.jsonl").write_text("".join(  # gold rising with the proxy: no warning
        json.dumps({"step": i + 1, "kl": float(i * i), "reward": 0.1 * i, "gold": 0.1 * i}) + "\n" for i in range(10)))
    assert "Over-optimisation in" not in write_report(tmp_path, tmp_path / "report.html").read_text()
