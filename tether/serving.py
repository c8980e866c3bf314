"""One checkpoint behind an OpenAI-compatible chat-completions endpoint (`tether serve-model`).

Why: to try a trained policy with any OpenAI client, and to let one tether judge with another's
model (`tether judge --url http://HOST:PORT/v1`). Endpoints:

- `POST /v1/chat/completions`: `messages` go through the model's own chat template
  (`tether.models.encode_prompt`, the same ids `tether sample` and the judge's `HFBackend` use);
  `max_tokens` (or `max_completion_tokens`), `temperature` (0 = greedy), `top_p`, `seed`, `stop` (up
  to 4 strings), `n` (1 only), `logprobs` and `top_logprobs` (0-20). The reply has OpenAI's shape:
  `choices[0].message`, `choices[0].finish_reason` ("stop": end-of-turn token or a stop string;
  "length": `max_tokens` reached), `choices[0].logprobs.content[i] = {token, logprob, bytes,
  top_logprobs: [{token, logprob, bytes}]}` and `usage` token counts.
- `GET /v1/models`: the one model served.

Details a client may care about:
- log-probabilities are those of the raw model distribution, log_softmax(logits), whatever the
  temperature or top_p (what vLLM returns by default): they are the model's beliefs, and the judge
  reads P("A") from them;
- `content` lists the tokens of the reply: the end-of-turn token is not in it, and after a stop
  string only the tokens that start before the cut are; `usage.completion_tokens` counts every token
  the model generated (end-of-turn token included);
- bad requests get a 4xx in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`,
  naming the field (`param`), never a 500: invalid JSON, unknown roles, `n` > 1, `stream`, too many
  tokens for the model's context, a body over `max_body_bytes` (413), a missing or wrong bearer
  token when the server has an API key (401);
- one model on a CPU: completions run one at a time under a lock (requests queue, none fail).
"""

from __future__ import annotations

import hmac
import inspect
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from starlette.concurrency import run_in_threadpool

from tether.errors import TetherError
from tether.rollout import eos_ids

MAX_BODY_BYTES = 1_000_000
MAX_TOKENS_CAP = 2048
LOGPROB_FLOOR = -9999.0  # OpenAI's stand-in for "too unlikely to write down" (and JSON has no -inf)


# --- the request ---------------------------------------------------------------------------------------
class Message(BaseModel):
    """One chat turn; `content` is a string or a list of text parts ({"type": "text", "text": ...})."""
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, v):
        if isinstance(v, str):
            return v
        if isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                       for p in v):
            return "".join(p["text"] for p in v)
        raise ValueError("expected a string or a list of {\"type\": \"text\", \"text\": ...} parts "
                         "(this server reads text only)")


UNSUPPORTED = {"stream": "streaming is not supported: send stream=false",
               "frequency_penalty": "not supported: send 0 or leave it out",
               "presence_penalty": "not supported: send 0 or leave it out",
               "logit_bias": "not supported: leave it out", "tools": "tool calls are not supported",
               "functions": "function calls are not supported"}


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions. Unknown fields are ignored (clients send many); fields
    that would change the answer in ways this server cannot honour are refused by name."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None  # any name is accepted: one model is served
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict | None = None
    tools: list | None = None
    functions: list | None = None
    response_format: dict | None = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _unsupported(cls, v, info):
        if v:
            raise ValueError(UNSUPPORTED[info.field_name])
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is None:
            return None
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise ValueError("expected a non-empty string or a list of up to 4 non-empty strings")
        return stops

    @field_validator("n")
    @classmethod
    def _one(cls, v):
        if v not in (None, 1):
            raise ValueError(f"only n=1 is supported (one completion per request), got {v}")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v, info):
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("needs logprobs=true")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v):
        if v is not None and v.get("type", "text") != "text":
            raise ValueError(f"only {{\"type\": \"text\"}} is supported, got {v.get('type')!r}")
        return v

    def conversation(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in self.messages]


class ApiError(Exception):
    """A request the server refuses: HTTP `status`, a message naming `param` (the field)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


def _byte_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character standing for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@dataclass
class Completion:
    """One finished completion (before it is shaped into OpenAI's JSON)."""
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int  # every generated token, end-of-turn included
    logprobs: list[dict] | None = None  # OpenAI's `logprobs.content` entries
    seed: int = 0


@dataclass
class ChatEngine:
    """A causal LM and its tokenizer, decoding one request at a time with the KV cache."""
    model: object
    tokenizer: object
    name: str
    max_tokens_cap: int = MAX_TOKENS_CAP
    lock: threading.Lock = field(default_factory=threading.Lock)
    completions: int = 0  # requests answered so far (tests count them)

    def __post_init__(self):
        self.model = self.model.eval()
        self.stop_ids = eos_ids(self.model, self.tokenizer)
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 4096
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._bytelevel = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        self._bytes_of = _byte_table()
        self._token_cache: dict[int, tuple[str, list[int]]] = {}
        # transformers renamed `past_key_values` to `cache` (5.x): use whichever this model takes
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    # --- tokens as OpenAI shows them ----------------------------------------------------------------
    def token_info(self, token_id: int) -> tuple[str, list[int]]:
        """(text, UTF-8 bytes) of one token: byte-level pieces ("ĠA") mapped back to bytes (b" A"),
        SentencePiece byte tokens ("<0xE2>") to their byte, anything else decoded on its own."""
        if token_id in self._token_cache:
            return self._token_cache[token_id]
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        if self._bytelevel and piece and all(c in self._bytes_of for c in piece):
            raw = bytes(self._bytes_of[c] for c in piece)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            raw = bytes([int(piece[3:5], 16)])
        elif piece.startswith("▁"):
            raw = piece.replace("▁", " ").encode("utf-8")
        else:
            raw = self.tokenizer.decode([token_id]).encode("utf-8")
        info = (raw.decode("utf-8", errors="replace"), list(raw))
        self._token_cache[token_id] = info
        return info

    def _entry(self, token_id: int, logprob: float) -> dict:
        text, raw = self.token_info(token_id)
        return {"token": text, "logprob": max(float(logprob), LOGPROB_FLOOR), "bytes": raw}

    # --- the prompt ----------------------------------------------------------------------------------
    def encode(self, messages: list[dict]) -> list[int]:
        from tether import models

        try:
            return models.encode_prompt(self.tokenizer, messages)
        except Exception as e:  # a template that raises (e.g. "roles must alternate") is the caller's problem
            raise ApiError(400, f"messages: the model's chat template refused the conversation: {e}", "messages")

    def budget(self, prompt_len: int, asked: int | None, field_name: str = "max_tokens") -> int:
        """New tokens allowed for this prompt: `asked` if it fits, else a 400 naming the field."""
        room = self.context - prompt_len
        if room < 1:
            raise ApiError(400, f"messages: the prompt has {prompt_len} tokens, the model's context is "
                                f"{self.context}: no room for an answer", "messages")
        if asked is None:
            return min(self.max_tokens_cap, room)
        if asked > self.max_tokens_cap:
            raise ApiError(400, f"{field_name}: at most {self.max_tokens_cap} on this server, got {asked}", field_name)
        if asked > room:
            raise ApiError(400, f"{field_name}: the prompt has {prompt_len} tokens and the model's context is "
                                f"{self.context}, so at most {room} new tokens, got {asked}", field_name)
        return asked

    # --- decoding ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def complete(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, stop: list[str] | None = None, top_logprobs: int | None = None) -> Completion:
        """Decode up to `max_tokens` tokens after `prompt_ids`; `top_logprobs` None: no log-probs."""
        with self.lock:
            return self._complete(prompt_ids, max_tokens, temperature, top_p, seed, stop or [], top_logprobs)

    def _complete(self, prompt_ids, max_tokens, temperature, top_p, seed, stop, top_logprobs) -> Completion:
        seed = secrets.randbits(63) if seed is None else seed
        gen = torch.Generator().manual_seed(seed % 2**63)
        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt_ids], device=device)  # (1, P), then (1, 1) per step
        past, out_ids, entries, generated, finish, text = None, [], [], 0, "length", ""
        for _ in range(max_tokens):
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: past})
            past = out[self._cache_arg]
            logits = out.logits[0, -1].float().cpu()  # (V,)
            lp = torch.log_softmax(logits, -1)  # (V,) the model's own distribution
            if temperature == 0:
                tok = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, -1)  # (V,)
                if top_p < 1.0:  # nucleus: the smallest set of tokens holding top_p of the mass
                    p_sorted, order = probs.sort(descending=True)
                    drop = p_sorted.cumsum(-1) - p_sorted >= top_p  # (V,) mass before this token already enough
                    probs = torch.zeros_like(probs).scatter(0, order, p_sorted.masked_fill(drop, 0.0))
                tok = int(torch.multinomial(probs, 1, generator=gen))
            generated += 1
            if tok in self.stop_ids:
                finish = "stop"
                break
            out_ids.append(tok)
            if top_logprobs is not None:
                entry = self._entry(tok, lp[tok])
                vals, top = lp.topk(top_logprobs)  # k = 0: empty
                entry["top_logprobs"] = [self._entry(int(i), v) for v, i in zip(vals.tolist(), top.tolist())]
                entries.append(entry)
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                starts = [len(self.tokenizer.decode(out_ids[:k], skip_special_tokens=True)) for k in range(len(out_ids))]
                entries = entries[:sum(st < cut for st in starts)]  # the tokens that start before the cut
                break
            ids = torch.tensor([[tok]], device=device)
        self.completions += 1
        return Completion(text, finish, len(prompt_ids), generated, entries if top_logprobs is not None else None, seed)


def completion_body(engine: ChatEngine, c: Completion) -> dict:
    """OpenAI's `chat.completion` object for one completion."""
    choice = {"index": 0, "message": {"role": "assistant", "content": c.text},
              "logprobs": None if c.logprobs is None else {"content": c.logprobs, "refusal": None},
              "finish_reason": c.finish_reason}
    return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
            "model": engine.name, "system_fingerprint": None, "choices": [choice],
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "total_tokens": c.prompt_tokens + c.completion_tokens}}


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    """One line per problem, each naming its field ("messages.0.role: ..."), and the first field."""
    lines, first = [], None
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        first = first or loc
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(msg if msg.startswith(loc + ":") else f"{loc}: {msg}")
    return "; ".join(lines), first


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (announced or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body: {declared} bytes, more than this server's limit of {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: more than this server's limit of {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model="bundled", tokenizer=None, name: str | None = None, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_tokens_cap: int = MAX_TOKENS_CAP):
    """The FastAPI app serving `model`: 'bundled', a local HF folder, a hub id, or a loaded model
    object with its `tokenizer`. `name` is the id reported by /v1/models (default: the model string)."""
    from tether import models

    if isinstance(model, str):
        name = name or model
        model, tokenizer = models.load_policy(model)
    elif tokenizer is None:
        raise TetherError("create_app: a model object needs its tokenizer")
    engine = ChatEngine(model, tokenizer, name or type(model).__name__, max_tokens_cap=max_tokens_cap)
    app = FastAPI(title="tether model server", docs_url=None, redoc_url=None)
    app.state.engine = engine
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Authorization: a valid 'Bearer <api key>' header is required",
                           "Authorization", "authentication_error")

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorise(request)
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": created,
                                            "owned_by": "tether"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorise(request)
        raw = await read_body(request, max_body_bytes)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body: not valid JSON ({e})", "body") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"body: expected a JSON object, got {type(data).__name__}", "body")
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as e:
            message, param = validation_message(e)
            raise ApiError(400, message, param) from None
        prompt_ids = engine.encode(req.conversation())
        asked, field_name = ((req.max_completion_tokens, "max_completion_tokens") if req.max_completion_tokens
                             is not None else (req.max_tokens, "max_tokens"))
        budget = engine.budget(len(prompt_ids), asked, field_name)
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        top = (req.top_logprobs or 0) if req.logprobs else None
        done = await run_in_threadpool(engine.complete, prompt_ids, budget, temperature, top_p, req.seed, req.stop, top)
        return JSONResponse(completion_body(engine, done))

    return app


class BackgroundServer:
    """uvicorn serving `app` from a daemon thread (tests, benchmarks): `with BackgroundServer(app) as url`.
    Port 0 picks a free port; the socket is bound before uvicorn starts, so there is no race."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port

    def __enter__(self) -> str:
        import uvicorn

        self.sock = bind(self.host, self.port)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise TetherError(f"the model server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise TetherError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock
