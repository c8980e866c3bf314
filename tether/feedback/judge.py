"""An AI judge for pairwise feedback (RLAIF): a language model compares two answers against a rubric.

The judge reads a written rubric (a "constitution", Bai et al. 2022, "Constitutional AI"), the
question and two answers, and says which answer is better. Following Lee et al. 2023 ("RLAIF:
Scaling Reinforcement Learning from Human Feedback with AI Feedback") it is read through the
probabilities of the answer tokens, not free text: P(first) = softmax over the log-probabilities of
"A" and "B" as the next token. LLM judges favour a position (Zheng et al. 2023, "Judging LLM-as-a-
Judge with MT-Bench and Chatbot Arena": position bias), so every pair is asked in both orders. Per
order the judge's answer is the letter with probability above 1/2; when the two orders disagree the
verdict is "tie" (Zheng et al.'s conservative swap rule) and the pair counts towards the
position-bias rate. P(a better) is the mean of
the two orders' probabilities (Lee et al.'s position-debiased preference), kept in the feedback row's
`meta["p_a"]`.

Backends (anything with `prob_first(conversations) -> list[Reading]` works):
- `HFBackend`: a local causal LM (default: the bundled SmolLM2-135M-Instruct, a weak judge). The
  judging prompt goes through the model's chat template; one forward pass per prompt, no generation.
- `OpenAIBackend`: any OpenAI-compatible chat endpoint (llama.cpp server, vLLM, ...) by URL, stdlib
  HTTP only. It asks for the log-probs of one token with its top 20 alternatives (OpenAI's maximum:
  a weak judge often ranks one letter below the top 5); if the server does not return them, or one
  letter is not among them, it reads the letter from the reply text (probability 1 or 0).

`tether.feedback.judge_feedback` stores verdicts as comparisons by a labeler with role 'ai_judge' and
measures the judge against the gold scorer and other labelers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from tether.errors import TetherError

DEFAULT_RUBRIC = """\
A better answer:
1. answers the question that was asked and stays on topic;
2. is complete: it does not stop mid-sentence (an answer marked [cut off] hit the length limit);
3. is concise: a few clear sentences, about 50 words or fewer unless the question needs more;
4. does not repeat itself;
5. is polite and calm;
6. has no unfilled placeholders such as [Name] or [insert date];
7. is honest: no invented facts.
Judge what the answers say, not which one comes first."""

SYSTEM = "You are a careful, impartial judge of answers written by an AI assistant.\n\n{rubric}"
USER = ("Question:\n{prompt}\n\n[Answer A]\n{first}\n[End of answer A]\n\n[Answer B]\n{second}\n"
        "[End of answer B]\n\nWhich answer is better according to the rules? Reply with one letter: A or B.")
CUT_OFF = " [cut off]"


class Reading(NamedTuple):
    """One order's reading: P(the first answer shown is better), None when unreadable; `mass`: the
    probability the judge put on the two letters at all (None when the backend cannot tell)."""
    p_first: float | None
    mass: float | None = None


class Backend(Protocol):
    name: str

    def prob_first(self, conversations: list[list[dict]]) -> list[Reading]: ...


def load_rubric(path: str | Path | None) -> str:
    """The rubric text of a file (UTF-8), or the default rubric for None."""
    if path is None:
        return DEFAULT_RUBRIC
    p = Path(path)
    if not p.is_file():
        raise TetherError(f"{p}: rubric file not found")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise TetherError(f"{p}: the rubric file is empty")
    return text


def _letter_ids(tok, letter: str) -> list[int]:
    """First token ids of the letter with and without a leading space (both are ways to say it)."""
    return sorted({tok(v, add_special_tokens=False).input_ids[0] for v in (letter, " " + letter)})


class HFBackend:
    """A local HF causal LM as judge: P(first) = sigmoid(logsumexp lp[A ids] - logsumexp lp[B ids])
    at the position after the chat template's generation prompt (Lee et al. 2023, sec. 2.1)."""

    def __init__(self, model="bundled", tokenizer=None, batch_size: int = 4, max_length: int | None = None):
        from tether import models

        if isinstance(model, str):
            self.name = f"hf:{model}"
            model, tokenizer = models.load_policy(model)
        else:
            self.name = f"hf:{type(model).__name__}"
            if tokenizer is None:
                raise TetherError("HFBackend: a model object needs its tokenizer")
        self.model, self.tok, self.batch_size = model.eval(), tokenizer, batch_size
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = max_length or limit or 4096
        self.ids_a, self.ids_b = _letter_ids(tokenizer, "A"), _letter_ids(tokenizer, "B")
        if set(self.ids_a) & set(self.ids_b):
            raise TetherError(f"{self.name}: the tokenizer does not tell 'A' from 'B' in its first token")

    @torch.no_grad()
    def prob_first(self, conversations: list[list[dict]]) -> list[Reading]:
        from tether import models

        rows = [models.encode_prompt(self.tok, c) for c in conversations]
        too_long = [len(r) for r in rows if len(r) > self.max_length]
        if too_long:
            raise TetherError(f"{self.name}: a judging prompt has {max(too_long)} tokens, more than the model's "
                              f"{self.max_length}; shorten the rubric or pass a smaller max_chars to Judge")
        backbone = getattr(self.model, self.model.base_model_prefix)
        head = self.model.get_output_embeddings()
        device = next(self.model.parameters()).device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: list[Reading | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (b, T) right-padded
            mask = torch.zeros((len(idx), width), dtype=torch.long)  # (b, T)
            for k, i in enumerate(idx):
                ids[k, :len(rows[i])], mask[k, :len(rows[i])] = torch.tensor(rows[i]), 1
            hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state  # (b, T, D)
            last = mask.sum(-1) - 1  # (b,) last real position: right padding leaves positions unchanged
            logits = head(hidden[torch.arange(len(idx)), last.to(device)]).float()  # (b, V)
            lp = torch.log_softmax(logits, -1)  # (b, V)
            la = torch.logsumexp(lp[:, self.ids_a], -1)  # (b,)
            lb = torch.logsumexp(lp[:, self.ids_b], -1)  # (b,)
            p = torch.sigmoid(la - lb).tolist()
            mass = (la.exp() + lb.exp()).tolist()
            for k, i in enumerate(idx):
                out[i] = Reading(p[k], mass[k])
        return out


_LETTER = re.compile(r"\b(?:answer|response|assistant)\s*\[?\(?([AB])\b|\[\[([AB])\]\]", re.IGNORECASE)


def parse_letter(text: str) -> float | None:
    """1.0 for a reply naming A, 0.0 for B, None if it names neither: a reply that starts with the
    letter ("A", "B.", "A)"), else "Answer A" / "Response B" / "[[A]]" anywhere."""
    t = text.strip().lstrip("*[(\"'")
    if t[:1].upper() in ("A", "B") and (len(t) == 1 or not t[1].isalpha()):
        return 1.0 if t[0].upper() == "A" else 0.0
    m = _LETTER.search(text)
    if m:
        return 1.0 if (m.group(1) or m.group(2)).upper() == "A" else 0.0
    return None


def _from_logprobs(logprobs: dict | None) -> Reading | None:
    """P(A) from the first generated token's top_logprobs, when both letters are among them."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    found: dict[str, list[float]] = {"A": [], "B": []}
    for entry in top or []:
        token = str(entry.get("token", "")).strip().upper()
        if token in found and entry.get("logprob") is not None:
            found[token].append(float(entry["logprob"]))
    if not found["A"] or not found["B"]:
        return None
    la, lb = (float(torch.logsumexp(torch.tensor(v), 0)) for v in (found["A"], found["B"]))
    return Reading(1.0 / (1.0 + math.exp(lb - la)), math.exp(la) + math.exp(lb))


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint: `url` is the server's base ("http://127.0.0.1:8080" or
    ".../v1") or the full ".../chat/completions" address. Greedy, `max_tokens` tokens per answer."""

    def __init__(self, url: str, model: str = "default", api_key: str | None = None, logprobs: bool = True,
                 max_tokens: int = 1, timeout: float = 60.0, concurrency: int = 4):
        base = url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise TetherError(f"judge URL must start with http:// or https://, got {url!r}")
        if not base.endswith("/chat/completions"):
            base += "/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"
        self.url, self.model, self.api_key, self.logprobs = base, model, api_key, logprobs
        self.max_tokens, self.timeout, self.concurrency = max_tokens, timeout, concurrency
        self.name = f"openai:{model}@{base}"

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def _one(self, conversation: list[dict]) -> Reading:
        payload = {"model": self.model, "messages": conversation, "max_tokens": self.max_tokens, "temperature": 0.0}
        try:
            try:
                body = self._post(payload | ({"logprobs": True, "top_logprobs": 20} if self.logprobs else {}))
            except urllib.error.HTTPError as e:
                if e.code not in (400, 422) or not self.logprobs:
                    raise
                self.logprobs = False  # a server that refuses logprobs: ask for the text only from now on
                body = self._post(payload)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:200]
            raise TetherError(f"judge endpoint {self.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise TetherError(f"cannot reach the judge endpoint {self.url}: {getattr(e, 'reason', e)}") from None
        except json.JSONDecodeError:
            raise TetherError(f"judge endpoint {self.url} did not answer JSON") from None
        try:
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TetherError(f"judge endpoint {self.url}: no choices[0].message in the reply "
                              f"{json.dumps(body)[:200]}") from None
        reading = _from_logprobs(choice.get("logprobs"))
        return reading if reading is not None else Reading(parse_letter(text))

    def prob_first(self, conversations: list[list[dict]]) -> list[Reading]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self._one, conversations))


@dataclass(frozen=True)
class Verdict:
    """The judge's answer on a pair (a, b). `orders`: the answer with a shown first, then with b shown
    first, each "a", "b", "tie" (probability exactly 1/2) or "none" (unreadable). `choice`: "a"/"b"
    when both orders agree, "cant_tell" when neither could be read, otherwise "tie". `p_a`: P(a better)
    averaged over the readable orders. `mass`: mean probability on the letters (None: not known)."""
    choice: str
    p_a: float | None
    orders: tuple[str, str]
    mass: float | None = None

    @property
    def position_flip(self) -> bool:
        """Both orders gave a decisive answer and they differ: the judge followed the position."""
        return self.orders[0] in ("a", "b") and self.orders[1] in ("a", "b") and self.orders[0] != self.orders[1]


def combine(first: Reading, second: Reading) -> Verdict:
    """Verdict from P(a better | a shown first) = first.p_first and P(b better | b shown first) = second.p_first."""
    def say(p_a: float | None) -> str:
        return "none" if p_a is None else "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"

    p_orders = [first.p_first, None if second.p_first is None else 1.0 - second.p_first]
    orders = (say(p_orders[0]), say(p_orders[1]))
    known = [p for p in p_orders if p is not None]
    masses = [m for m in (first.mass, second.mass) if m is not None]
    if not known:
        choice = "cant_tell"
    elif orders[0] == orders[1] and orders[0] in ("a", "b"):
        choice = orders[0]
    else:
        choice = "tie"
    return Verdict(choice, sum(known) / len(known) if known else None, orders,
                   sum(masses) / len(masses) if masses else None)


def _prompt_block(prompt: str | list[dict]) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


class Judge:
    """A backend plus a rubric. `max_chars` cuts each answer shown to the judge (marked [cut off])."""

    def __init__(self, backend: Backend, rubric: str = DEFAULT_RUBRIC, max_chars: int = 1500):
        if not rubric.strip():
            raise TetherError("the judge's rubric is empty")
        self.backend, self.rubric, self.max_chars = backend, rubric.strip(), max_chars

    @property
    def rubric_sha(self) -> str:
        return hashlib.sha256(self.rubric.encode()).hexdigest()[:12]

    def conversation(self, prompt: str | list[dict], first: str, second: str, first_finished: bool = True,
                     second_finished: bool = True) -> list[dict]:
        def show(text: str, finished: bool) -> str:
            cut = len(text) > self.max_chars
            return text[:self.max_chars] + (CUT_OFF if cut or not finished else "")

        return [{"role": "system", "content": SYSTEM.format(rubric=self.rubric)},
                {"role": "user", "content": USER.format(prompt=_prompt_block(prompt), first=show(first, first_finished),
                                                        second=show(second, second_finished))}]

    def judge_pairs(self, items: Sequence[tuple]) -> list[Verdict]:
        """Verdicts for (prompt, a, b[, a_finished, b_finished]) items, each asked in both orders."""
        convs = []
        for item in items:
            prompt, a, b, *fin = item
            fa, fb = (fin + [True, True])[:2]
            convs += [self.conversation(prompt, a, b, fa, fb), self.conversation(prompt, b, a, fb, fa)]
        readings = self.backend.prob_first(convs)
        if len(readings) != len(convs):
            raise TetherError(f"judge backend {self.backend.name} returned {len(readings)} readings for {len(convs)}")
        return [combine(readings[2 * i], readings[2 * i + 1]) for i in range(len(items))]
