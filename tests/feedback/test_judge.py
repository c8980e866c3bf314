"""The AI judge: both-order verdicts, the HTTP backend against a fake OpenAI-compatible server, the
HF backend on the tiny random model, storage as 'ai_judge' comparisons, and agreement numbers."""

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from sqlalchemy import select

from tether.data import schema as S
from tether.errors import TetherError
from tether.feedback.judge import (DEFAULT_RUBRIC, HFBackend, Judge, OpenAIBackend, Reading, Verdict, combine,
                                   load_rubric, parse_letter)
from tether.feedback.judge_feedback import judge_agreement, judge_stored_pairs, verdict_stats

torch.set_num_threads(1)
ANSWER = re.compile(r"\[Answer ([AB])\]\n(.*?)\n\[End of answer \1\]", re.DOTALL)


# --- a fake OpenAI-compatible server ----------------------------------------------------------------
class FakeJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions. mode "short": the shorter answer wins (logprobs 0.9 / 0.1 when asked);
    "refuse_logprobs": HTTP 400 when logprobs are asked, else the letter as text; "first": always "A";
    "error": HTTP 500."""
    mode = "short"
    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if self.mode == "error" or (self.mode == "refuse_logprobs" and body.get("logprobs")):
            self.send_response(500 if self.mode == "error" else 400)
            self.end_headers()
            self.wfile.write(b'{"error": "nope"}')
            return
        answers = dict(ANSWER.findall(body["messages"][-1]["content"]))
        if self.mode == "first":
            letter = "A"
        else:
            letter = "A" if len(answers["A"]) <= len(answers["B"]) else "B"
        choice = {"index": 0, "message": {"role": "assistant", "content": letter}, "finish_reason": "length"}
        if body.get("logprobs"):
            other = "B" if letter == "A" else "A"
            choice["logprobs"] = {"content": [{"token": letter, "logprob": math.log(0.9), "top_logprobs": [
                {"token": letter, "logprob": math.log(0.9)}, {"token": other, "logprob": math.log(0.1)},
                {"token": "The", "logprob": -9.0}]}]}
        data = json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_server():
    FakeJudge.mode, FakeJudge.requests = "short", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PAIRS = [("Name a colour.", "Blue.", "Blue is a colour that many people like very much indeed."),
         ("Say hi.", "Hello there, it is so nice to meet you today!", "Hi!"),
         ("What is 2+2?", "4", "The answer is 4.")]


# --- pure pieces ------------------------------------------------------------------------------------
def test_combine_both_orders_by_hand():
    # a first: P(a) = 0.8 -> "a"; b first: P(b) = 0.3, so P(a) = 0.7 -> "a"; mean P(a) = 0.75
    v = combine(Reading(0.8, 0.5), Reading(0.3, 0.7))
    assert v.choice == "a" and v.orders == ("a", "a") and v.p_a == pytest.approx(0.75) and v.mass == pytest.approx(0.6)
    assert not v.position_flip
    # the judge always picks the first shown: orders disagree -> tie, a position flip, P(a) = (0.8 + 0.2) / 2
    v = combine(Reading(0.8), Reading(0.8))
    assert v.choice == "tie" and v.orders == ("a", "b") and v.position_flip and v.p_a == pytest.approx(0.5)
    assert combine(Reading(None), Reading(None)).choice == "cant_tell"
    v = combine(Reading(None), Reading(0.4))  # one order unreadable, the other says a: not enough to decide
    assert v.choice == "tie" and v.orders == ("none", "a") and v.p_a == pytest.approx(0.6) and not v.position_flip
    assert combine(Reading(0.5), Reading(0.5)).orders == ("tie", "tie")


def test_parse_letter():
    for text, want in [("A", 1.0), (" B.", 0.0), ("A) because", 1.0), ("**B**", 0.0), ("[[A]]", 1.0),
                       ("I prefer Answer B here", 0.0), ("Response A is better", 1.0), ("Both are fine", None),
                       ("Absolutely the second", None), ("", None)]:
        assert parse_letter(text) == want, text


def test_verdict_stats_by_hand():
    vs = [Verdict("a", 0.9, ("a", "a")),  # reference a: agrees
          Verdict("b", 0.2, ("b", "b")),  # reference a: disagrees
          Verdict("tie", 0.5, ("a", "b")),  # reference b: half; a position flip (chose the first shown twice)
          Verdict("a", 0.7, ("a", "a"))]  # no reference answer: only in the position numbers
    st = verdict_stats(vs, ["a", "a", "b", None])
    assert st["pairs"] == 4 and st["scored_pairs"] == 3
    assert st["agreement"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert st["decisive_agreement"] == pytest.approx(0.5) and st["decided"] == pytest.approx(2 / 3)
    assert st["p_winner"] == pytest.approx((0.9 + 0.2 + 0.5) / 3)
    assert st["position_bias_rate"] == pytest.approx(1 / 4) and st["tie_rate"] == pytest.approx(1 / 4)
    # decisive single-order answers naming the first shown: a-first "a" (3 of them), b-first "b" (2): 5 of 8
    assert st["first_position_rate"] == pytest.approx(5 / 8)
    assert math.isnan(st["letter_mass"])
    with pytest.raises(ValueError):
        verdict_stats(vs, ["a"])


def test_rubric_file(tmp_path):
    assert load_rubric(None) == DEFAULT_RUBRIC
    (tmp_path / "r.txt").write_text("Prefer answers that rhyme.\n")
    assert load_rubric(tmp_path / "r.txt") == "Prefer answers that rhyme."
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(TetherError, match="empty"):
        load_rubric(tmp_path / "empty.txt")
    with pytest.raises(TetherError, match="not found"):
        load_rubric(tmp_path / "missing.txt")


# --- the HTTP backend -------------------------------------------------------------------------------
def test_http_judge_with_logprobs(fake_server):
    judge = Judge(OpenAIBackend(fake_server + "/v1", model="judge-x"), rubric="Shorter is better.")
    verdicts = judge.judge_pairs(PAIRS)
    assert [v.choice for v in verdicts] == ["a", "b", "a"]
    assert all(v.p_a == pytest.approx(0.9 if v.choice == "a" else 0.1) for v in verdicts)
    assert all(v.mass == pytest.approx(1.0) for v in verdicts)
    assert len(FakeJudge.requests) == 6  # both orders of each pair
    path, body = FakeJudge.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge-x" and body["logprobs"] is True
    assert "Shorter is better." in body["messages"][0]["content"]
    # the two orders of a pair show the answers swapped
    shown = sorted(dict(ANSWER.findall(b["messages"][-1]["content"]))["A"] for _, b in FakeJudge.requests
                   if "Name a colour." in b["messages"][-1]["content"])
    assert shown == sorted(PAIRS[0][1:])
    st = verdict_stats(verdicts, ["a", "b", "a"])
    assert st["agreement"] == 1.0 and st["position_bias_rate"] == 0.0 and st["first_position_rate"] == 0.5


def test_http_judge_falls_back_to_text_when_logprobs_refused(fake_server):
    FakeJudge.mode = "refuse_logprobs"
    backend = OpenAIBackend(fake_server, concurrency=1)
    verdicts = Judge(backend).judge_pairs(PAIRS[:2])
    assert [v.choice for v in verdicts] == ["a", "b"] and [v.p_a for v in verdicts] == [1.0, 0.0]
    assert backend.logprobs is False and verdicts[0].mass is None
    assert sum("logprobs" in b for _, b in FakeJudge.requests) == 1  # asked once, then never again


def test_http_position_biased_judge_gives_ties(fake_server):
    FakeJudge.mode = "first"
    verdicts = Judge(OpenAIBackend(fake_server)).judge_pairs(PAIRS)
    assert [v.choice for v in verdicts] == ["tie"] * 3
    st = verdict_stats(verdicts, ["a", "b", "a"])
    assert st["position_bias_rate"] == 1.0 and st["first_position_rate"] == 1.0 and st["agreement"] == 0.5


def test_http_errors_are_clear(fake_server):
    FakeJudge.mode = "error"
    with pytest.raises(TetherError, match="HTTP 500"):
        Judge(OpenAIBackend(fake_server)).judge_pairs(PAIRS[:1])
    with pytest.raises(TetherError, match="cannot reach"):
        Judge(OpenAIBackend("http://127.0.0.1:9", timeout=2)).judge_pairs(PAIRS[:1])
    with pytest.raises(TetherError, match="http"):
        OpenAIBackend("localhost:8080")


# --- the HF backend ---------------------------------------------------------------------------------
def test_hf_judge_on_tiny_model(tiny_model_dir):
    backend = HFBackend(str(tiny_model_dir), batch_size=4)
    judge = Judge(backend)
    verdicts = judge.judge_pairs(PAIRS)
    assert all(v.choice in ("a", "b", "tie") and 0 < v.p_a < 1 and 0 < v.mass <= 1 for v in verdicts)
    # the same reading as a plain full forward pass of one judging prompt
    from tether.models import encode_prompt

    conv = judge.conversation(*PAIRS[0])
    ids = torch.tensor([encode_prompt(backend.tok, conv)])
    with torch.no_grad():
        lp = torch.log_softmax(backend.model(ids).logits[0, -1].float(), -1)
    want = torch.sigmoid(torch.logsumexp(lp[backend.ids_a], 0) - torch.logsumexp(lp[backend.ids_b], 0)).item()
    assert backend.prob_first([conv])[0].p_first == pytest.approx(want, abs=1e-5)
    # batching (right padding of different lengths) changes nothing
    convs = [judge.conversation(*p) for p in PAIRS]
    one = [HFBackend(backend.model, backend.tok, batch_size=1).prob_first([c])[0].p_first for c in convs]
    assert [r.p_first for r in backend.prob_first(convs)] == pytest.approx(one, abs=1e-5)
    # swapping a and b mirrors the verdict exactly
    swapped = judge.judge_pairs([(p, b, a) for p, a, b in PAIRS])
    assert [v.p_a for v in swapped] == pytest.approx([1 - v.p_a for v in verdicts], abs=1e-6)


def test_hf_judge_refuses_prompts_longer_than_the_model(tiny_model_dir):
    backend = HFBackend(str(tiny_model_dir), max_length=64)
    with pytest.raises(TetherError, match="tokens, more than"):
        Judge(backend).judge_pairs(PAIRS[:1])


# --- stored feedback --------------------------------------------------------------------------------
def _store_with_feedback(tmp_path):
    from tether.data.store import Store
    from tether.feedback.simulate import SimulationConfig, simulate_feedback

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    texts = ["Paris.", "The capital of France is Paris, a city on the Seine in the north.",
             "Paris, I think, though I am not entirely sure about it at all.", "Lyon"]
    with store.session() as s:
        for i in range(6):
            q = f"What is the capital of France? ({i})"
            p, _ = store.get_or_add_prompt(s, q, [{"role": "user", "content": q}])
            s.add_all([S.Response(prompt_id=p.id, text=t, policy="pi", finished=True) for t in texts])
    simulate_feedback(store, SimulationConfig(items=12, overlap=3, seed=0, mix={"comparison": 1.0}))
    return store


def test_stored_pairs_are_judged_once_and_measured(tmp_path, fake_server):
    store = _store_with_feedback(tmp_path)
    judge = Judge(OpenAIBackend(fake_server))
    counts = judge_stored_pairs(store, judge, batch_size=5)
    assert counts["tasks"] == 12 and counts["new_pairs"] == 0
    assert counts.get("a", 0) + counts.get("b", 0) + counts.get("tie", 0) == 12
    with store.session() as s:
        lab = s.scalar(select(S.Labeler).where(S.Labeler.name == "ai-judge"))
        assert lab.role == "ai_judge" and lab.groups["backend"].startswith("openai:")
        rows = list(s.scalars(select(S.Comparison).where(S.Comparison.labeler_id == lab.id)))
        assert len(rows) == 12 and all(r.task_id is not None and 0 <= r.meta["p_a"] <= 1 for r in rows)
        for r in rows:  # the shorter answer wins, in the task's order
            a, b = s.get(S.Response, r.response_a_id).text, s.get(S.Response, r.response_b_id).text
            assert r.choice == ("a" if len(a) <= len(b) else "b")
        assert s.scalar(select(S.Assignment).where(S.Assignment.labeler_id == lab.id).limit(1)).status == "done"
    assert judge_stored_pairs(store, judge) == {"tasks": 0, "new_pairs": 0}  # nothing left: a rerun resumes
    counts = judge_stored_pairs(store, judge, tasks=False, new_pairs=5, seed=1)
    assert counts["new_pairs"] == 5
    with store.session() as s:
        assert len(list(s.scalars(select(S.Task).where(S.Task.options["source"].as_string() == "ai_judge")))) == 5

    report = judge_agreement(store, scorer=lambda p, r, f: -len(r))  # a "gold" that likes short answers
    g = report["gold"]
    assert g["pairs"] == 17 and g["agreement"] == 1.0 and g["position_bias_rate"] == 0.0
    sim = report["labelers"]["simulated"]  # the simulated pool judged the 12 task pairs
    assert 0 < sim["scored_pairs"] <= 12 and 0.0 <= sim["agreement"] <= 1.0
    assert "human" not in report["labelers"]
    with pytest.raises(TetherError, match="no labeler named"):
        judge_agreement(store, name="nobody")


def test_judge_name_must_not_belong_to_a_person(tmp_path, fake_server):
    store = _store_with_feedback(tmp_path)
    with store.session() as s:
        store.labeler(s, "alice")
    with pytest.raises(TetherError, match="role 'labeler'"):
        judge_stored_pairs(store, Judge(OpenAIBackend(fake_server)), name="alice")


# --- the bundled model, honestly ---------------------------------------------------------------------
@pytest.mark.bundled
def test_bundled_judge_agreement_is_reported():
    """SmolLM2-135M as judge on clear-cut pairs (a clean answer against a cut-off, repetitive, rude or
    placeholder one). Only checks that it runs and the numbers are proportions; prints them."""
    from tether.feedback.judge_feedback import gold_winners

    good = {"How do I boil an egg?": "Put the egg in boiling water for 8 to 10 minutes, then cool it in cold water.",
            "Suggest a name for a cat.": "How about Miso? It is short, friendly and easy to call.",
            "Why is the sky blue?": "Air scatters blue sunlight more than red light, so the sky looks blue.",
            "Give me a tip for sleeping better.": "Keep a regular bedtime and avoid screens for an hour before bed."}
    bad = ["Sure! Sure! Sure! Sure! Sure! Sure! Sure! Sure!", "Dear [Name], thank you for your question about",
           "That is a stupid question and I hate answering it.", "I am SmolLM, I am here to help. I am here to help."]
    items = [(q, g, b, True, i != 1) if i % 2 else (q, b, g, i != 1, True)
             for i, (q, g) in enumerate(good.items()) for b in (bad[i], bad[(i + 1) % 4])]
    verdicts = Judge(HFBackend("bundled", batch_size=4)).judge_pairs(items)
    st = verdict_stats(verdicts, gold_winners(items))
    print("bundled judge vs gold:", {k: round(v, 3) if isinstance(v, float) else v for k, v in st.items()})
    for key in ("agreement", "decided", "position_bias_rate", "first_position_rate", "tie_rate", "letter_mass"):
        assert 0.0 <= st[key] <= 1.0, key


def test_judge_command(tmp_path, fake_server):
    """`tether judge --url ...` on a workspace, through typer (registered here as cli.py will)."""
    import typer
    from typer.testing import CliRunner

    from tether.commands.judge import judge
    from tether.workspace import init_workspace

    app = typer.Typer()
    app.command()(judge)
    app.command("other")(lambda: None)  # two commands: typer keeps the command name
    ws = init_workspace(tmp_path / "ws", policy="bundled")
    store = _store_with_feedback(tmp_path)
    ws.config.database = store.engine.url.render_as_string(hide_password=False)
    ws.save()
    runner = CliRunner()
    r = runner.invoke(app, ["judge", "--url", fake_server, "--pairs", "3", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "judged 15 pairs (12 stored tasks, 3 new)" in r.output and "vs the gold scorer" in r.output
    assert "vs the majority of simulated labelers" in r.output
    r = runner.invoke(app, ["judge", "--url", "localhost:1", "-w", str(ws.root)])
    assert r.exit_code == 1 and "http://" in r.output and "Traceback" not in r.output
