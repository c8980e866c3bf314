"""`tether.serving`: the real server (uvicorn on a free port, in a thread) serving the tiny random
model, and the AI judge's HTTP backend against it (no canned fake server).

The judge's two backends read the same thing: HFBackend takes P(first) = sigmoid(logsumexp lp[A ids]
- logsumexp lp[B ids]) over the token ids of "A" and " A" (and "B", " B") from one forward pass;
OpenAIBackend asks the server for the first token's 20 top_logprobs and takes the same logsumexp over
the entries whose text is A or B. They agree whenever the letter variants the model puts mass on are
in that list, which `make_letter_model` arranges (test_http_judge_equals_hf_backend). When a letter is
missing from the list, the HTTP backend falls back to the reply's text (P = 1, 0 or unreadable), as
the random tiny model shows (test_http_judge_on_random_model_reads_the_reply_text).
"""

from __future__ import annotations

import copy

import httpx
import pytest
import torch

from tether.errors import TetherError
from tether.feedback.judge import HFBackend, Judge, OpenAIBackend
from tether.models import encode_prompt
from tether.serving import BackgroundServer, ChatEngine, create_app

torch.set_num_threads(1)

HELLO = [{"role": "user", "content": "Say hello."}]
PAIRS = [("Name a colour.", "Blue.", "Blue is a colour that many people like very much indeed."),
         ("Say hi.", "Hello there, it is so nice to meet you today!", "Hi!"),
         ("What is 2+2?", "4", "The answer is 4.")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from tether.models import load_policy

    return load_policy(str(tiny_model_dir))


@pytest.fixture(scope="module")
def server(tiny):
    app = create_app(*tiny, name="tiny", max_body_bytes=100_000, max_tokens_cap=64)
    with BackgroundServer(app) as url:
        yield url, app.state.engine


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def chat(client, **body):
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO} | body)
    assert r.status_code == 200, r.text
    return r.json()


@torch.no_grad()
def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the next-token logits after `ids`, from one plain forward pass (no cache)."""
    return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)  # (V,)


# --- the endpoint -----------------------------------------------------------------------------------
def test_models_and_response_shape(server, client, tiny):
    _, tok = tiny
    assert client.get("/v1/models").json()["data"][0] | {"created": 0} == \
        {"id": "tiny", "object": "model", "created": 0, "owned_by": "tether"}
    body = chat(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(encode_prompt(tok, HELLO))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] <= 5
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= usage["completion_tokens"]
    for e in content:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"} and len(e["top_logprobs"]) == 3
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        tops = [t["logprob"] for t in e["top_logprobs"]]
        assert tops == sorted(tops, reverse=True) and all(x <= 0 for x in tops)
        assert e["logprob"] == pytest.approx(tops[0])  # greedy: the chosen token is the most likely
        assert all(set(t) == {"token", "logprob", "bytes"} for t in e["top_logprobs"])
    assert b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", "replace") == choice["message"]["content"]
    assert chat(client, max_tokens=2)["choices"][0]["logprobs"] is None  # not asked for


def test_greedy_is_deterministic_and_seeds_reproduce(client):
    a, b = (chat(client, max_tokens=8, temperature=0, logprobs=True) for _ in range(2))
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["choices"][0]["logprobs"] == b["choices"][0]["logprobs"]
    s1, s2, s3 = (chat(client, max_tokens=8, temperature=1.0, top_p=0.9, seed=s)["choices"][0]["message"]["content"]
                  for s in (3, 3, 4))
    assert s1 == s2 and s1 != s3


def test_logprobs_equal_a_direct_forward_pass(server, client, tiny):
    """The first token's top 20 are log_softmax of a plain forward pass; the second token's come through
    the KV cache and equal a forward pass over prompt + first token."""
    model, tok = tiny
    engine = server[1]
    ids = encode_prompt(tok, HELLO)
    body = chat(client, max_tokens=2, temperature=0, logprobs=True, top_logprobs=20)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 2
    first = direct_logprobs(model, ids)
    second = direct_logprobs(model, ids + [int(first.argmax())])
    for entry, lp in zip(content, (first, second)):
        vals, top = lp.topk(40)
        want = {tuple(engine.token_info(i)[1]): v for i, v in zip(top.tolist(), vals.tolist())}
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(vals[:20].tolist(), abs=1e-4)
        for t in entry["top_logprobs"]:  # token by token (near-ties may swap places in the list)
            assert t["logprob"] == pytest.approx(want[tuple(t["bytes"])], abs=1e-4)
        assert entry["logprob"] == pytest.approx(float(lp.max()), abs=1e-4)
        assert entry["bytes"] == engine.token_info(int(lp.argmax()))[1]


def test_token_text_and_bytes(server, tiny):
    """Byte-level BPE pieces ("ĠA") come back as the text and UTF-8 bytes they stand for."""
    _, tok = tiny
    engine = server[1]
    for text in ("A", " A", " hello", "é", " 東"):
        for i in tok(text, add_special_tokens=False).input_ids[:1]:
            piece, raw = engine.token_info(i)
            assert text.encode("utf-8").startswith(bytes(raw)) and raw
            if len(tok(text, add_special_tokens=False).input_ids) == 1:
                assert piece == text and bytes(raw) == text.encode("utf-8")


def test_max_tokens_and_finish_reason(server, client, tiny):
    model, tok = tiny
    body = chat(client, max_tokens=3, temperature=0, logprobs=True)
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["logprobs"]["content"]) == 3
    # the random model never says end-of-turn, so a second engine on the same model takes its first
    # greedy token as end-of-turn: the answer ends at once with "stop"; the token is counted in usage
    # but shown neither in the text nor in the log-probs
    t0 = int(direct_logprobs(model, encode_prompt(tok, HELLO)).argmax())
    assert t0 not in server[1].stop_ids
    eot = ChatEngine(model, tok, "eot")
    eot.stop_ids = {t0}
    done = eot.complete(encode_prompt(tok, HELLO), 5, temperature=0, top_logprobs=0)
    assert (done.finish_reason, done.completion_tokens, done.text, done.logprobs) == ("stop", 1, "", [])


def test_stop_strings(client):
    sampled = dict(max_tokens=10, temperature=1.0, seed=11)  # greedy repeats one token; a seeded sample varies
    full = chat(client, logprobs=True, **sampled)["choices"][0]
    text, tokens = full["message"]["content"], [e["token"] for e in full["logprobs"]["content"]]
    start = len("".join(tokens[:4]))  # a stop string that begins with the fifth token's text
    stop = text[start:start + 3]
    cut = text.find(stop)
    assert len(stop) == 3 and cut > 0
    body = chat(client, logprobs=True, stop=["never-said", stop], **sampled)
    choice = body["choices"][0]
    assert choice["message"]["content"] == text[:cut] and choice["finish_reason"] == "stop"
    shown = [e["token"] for e in choice["logprobs"]["content"]]
    assert "".join(shown).startswith(text[:cut]) and len("".join(shown[:-1])) < cut  # the tokens before the cut
    assert body["usage"]["completion_tokens"] < 10
    # a stop string that never comes changes nothing
    same = chat(client, stop="never-said", **sampled)["choices"][0]
    assert same["message"]["content"] == text and same["finish_reason"] == full["finish_reason"]


USER = {"role": "user", "content": "x"}
BAD = [  # (raw body, the field named in the error)
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b"{}", "messages"),
    (b'{"messages": []}', "messages"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}', "messages.0.role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
    (b'{"messages": [{"role": "user"}]}', "messages.0.content"),
    (b'{"messages": "hello"}', "messages"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}', "max_tokens"),  # the server's cap
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', "stream"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}', "top_p"),
    (b'{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}', "top_logprobs"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', "top_logprobs"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    (b'{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}', "logit_bias"),
]


@pytest.mark.parametrize("raw,param", BAD, ids=[p for _, p in BAD])
def test_bad_requests_get_400_naming_the_field(client, raw, param):
    r = client.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"


def test_prompt_and_answer_must_fit_the_context(client):
    """The tiny model's context is 512 tokens: a long prompt leaves no room; max_tokens past it is refused."""
    long = {"role": "user", "content": "word " * 600}
    r = client.post("/v1/chat/completions", json={"messages": [long]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages" and "context" in r.text
    mid = {"role": "user", "content": "word " * 480}
    r = client.post("/v1/chat/completions", json={"messages": [mid], "max_completion_tokens": 60})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens" and "at most" in r.text


def test_too_large_bodies_get_413(client):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 200_000 + b'"}]}'
    r = client.post("/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    chunks = (big[i:i + 10_000] for i in range(0, len(big), 10_000))  # no Content-Length: counted as it streams
    r = client.post("/v1/chat/completions", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_text_parts_and_developer_role_are_read(client, tiny):
    parts = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hello."}]}]
    body = chat(client, messages=parts, max_tokens=1, unknown_field="ignored")
    want = encode_prompt(tiny[1], [{"role": "system", "content": "Be brief."}, HELLO[0]])
    assert body["usage"]["prompt_tokens"] == len(want)


def test_api_key(tiny):
    with BackgroundServer(create_app(*tiny, name="tiny", api_key="s3cret")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
                r = httpx.request(method, url + path, headers=headers, json={"messages": HELLO})
                assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
                assert r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(url + "/v1/models", headers=ok).status_code == 200
        r = httpx.post(url + "/v1/chat/completions", headers=ok, json={"messages": HELLO, "max_tokens": 1})
        assert r.status_code == 200
        conv = Judge(HFBackend(*tiny)).conversation(*PAIRS[0])
        assert OpenAIBackend(url, api_key="s3cret").prob_first([conv])[0] is not None
        with pytest.raises(TetherError, match="HTTP 401"):
            OpenAIBackend(url).prob_first([conv])


# --- the AI judge against the real server -----------------------------------------------------------
def test_http_judge_on_random_model_reads_the_reply_text(server, tiny):
    """The random model puts no special mass on "A"/"B": they are not among its 20 likeliest next
    tokens, so the HTTP judge cannot read P(A) from log-probs and reads the greedy reply instead
    (P = 1, 0 or None), while HFBackend still computes a probability from the full distribution."""
    url, engine = server
    hf = HFBackend(*tiny)
    judge = Judge(OpenAIBackend(url + "/v1", model="tiny"))
    convs = [judge.conversation(*p) for p in PAIRS]
    before = engine.completions
    verdicts = judge.judge_pairs(PAIRS)
    assert engine.completions - before == 2 * len(PAIRS)  # both orders of each pair
    assert all(v.choice in ("a", "b", "tie", "cant_tell") and v.mass is None for v in verdicts)
    for conv in convs:
        lp = direct_logprobs(tiny[0], encode_prompt(tiny[1], conv))
        rank = (lp > lp[hf.ids_a[0]]).sum()
        assert rank >= 20  # "A" is not among the top 20 the judge asks for
        reply = OpenAIBackend(url, max_tokens=1, logprobs=False)._one(conv)
        assert judge.backend.prob_first([conv])[0] == reply
        assert 0 < hf.prob_first([conv])[0].p_first < 1


def make_letter_model(tiny, b_scale: float = 14.0, decoys: int = 0):
    """The tiny model with its output rows for "A", " A", "B", " B" rewritten so the letters lead its
    next-token distribution after a judging prompt and P(A) moves with the answers shown: row = scale
    x the mean last hidden state (the letters on top) +/- a direction along which the conversations'
    hidden states differ (A against B). With `b_scale` lower and `decoys` other tokens in between,
    "B" ranks below the top 5 but within the top 20."""
    model, tok = tiny
    model = copy.deepcopy(model)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    judge = Judge(HFBackend(model, tok))
    convs = [judge.conversation(p, a, b) for p, a, b in PAIRS] + [judge.conversation(p, b, a) for p, a, b in PAIRS]
    with torch.no_grad():
        h = torch.stack([model.model(torch.tensor([encode_prompt(tok, c)])).last_hidden_state[0, -1] for c in convs])
        mean = h.mean(0)
        spread = torch.linalg.svd(h - mean).Vh[0]
        spread -= (spread @ mean) / (mean @ mean) * mean  # no A/B preference at the mean state
        spread /= (spread @ (h - mean).T).std()
        up = mean / (mean @ mean)
        ids = judge.backend
        rows = [(ids.ids_a[0], 14.0, 1), (ids.ids_a[1], 12.0, 1), (ids.ids_b[0], b_scale, -1),
                (ids.ids_b[1], b_scale - 2, -1)]
        for i, scale, sign in rows:
            model.lm_head.weight[i] = scale * up + sign * 1.5 * spread
        for k in range(decoys):  # tokens "0", "1", ... between "A" and "B"
            model.lm_head.weight[tok(str(k), add_special_tokens=False).input_ids[0]] = (b_scale + 4) * up
    return model, tok


@pytest.mark.parametrize("b_low", [False, True], ids=["letters-on-top", "B-below-top-5"])
def test_http_judge_equals_hf_backend(tiny, b_low):
    """Served over HTTP, the judge reads the same P(first answer) and letter mass as HFBackend on the
    same model and conversations, in both orders, and gives the same verdicts. With "B" ranked 6th
    or lower this holds because the judge asks for the top 20 log-probs (with the top 5 it fell back
    to the reply text: P = 1)."""
    model, tok = make_letter_model(tiny, b_scale=8.0, decoys=6) if b_low else make_letter_model(tiny)
    hf = HFBackend(model, tok)
    with BackgroundServer(create_app(model, tok, name="letters")) as url:
        http = OpenAIBackend(url, model="letters")
        judge_hf, judge_http = Judge(hf), Judge(http)
        convs = [judge_hf.conversation(p, a, b) for p, a, b in PAIRS] + \
                [judge_hf.conversation(p, b, a) for p, a, b in PAIRS]
        if b_low:
            for c in convs:
                lp = direct_logprobs(model, encode_prompt(tok, c))
                assert 5 <= int((lp > lp[hf.ids_b[0]]).sum()) < 18
        want, got = hf.prob_first(convs), http.prob_first(convs)
        assert [r.p_first for r in got] == pytest.approx([r.p_first for r in want], abs=1e-4)
        assert [r.mass for r in got] == pytest.approx([r.mass for r in want], abs=1e-4)
        ps = [r.p_first for r in want]
        assert (max(ps) > 0.6 and min(ps) < 0.4) if not b_low else all(0.5 < x < 0.9999 for x in ps)
        v_http, v_hf = judge_http.judge_pairs(PAIRS), judge_hf.judge_pairs(PAIRS)
        assert [(v.choice, v.orders) for v in v_http] == [(v.choice, v.orders) for v in v_hf]
        assert [v.p_a for v in v_http] == pytest.approx([v.p_a for v in v_hf], abs=1e-4)


def test_serve_model_command_errors_are_clear(tmp_path):
    """`tether serve-model` through typer (registered as cli.py does): a busy port and an unknown model
    each end with one error line and exit status 1, before anything is served."""
    import socket

    import typer
    from typer.testing import CliRunner

    from tether.commands.serve_model import serve_model

    app = typer.Typer()
    app.command("serve-model")(serve_model)
    app.command("other")(lambda: None)
    runner = CliRunner()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = runner.invoke(app, ["serve-model", str(tmp_path), "--port", str(busy.getsockname()[1]), "--threads", "1"])
    assert r.exit_code == 1 and "cannot listen on 127.0.0.1" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["serve-model", str(tmp_path / "missing"), "--port", "0", "--threads", "1"])
    assert r.exit_code == 1 and "Could not load model" in r.output
    r = runner.invoke(app, ["serve-model", "--help"])
    assert r.exit_code == 0 and "--api-key" in r.output
