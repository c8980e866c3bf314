"""Import and export: prompts (txt, JSONL, CSV), demonstrations (conversational `messages`), and
preference pairs in TRL's formats.

TRL preference formats (https://huggingface.co/docs/trl/dataset_formats):
  standard        {"prompt": "...", "chosen": "...", "rejected": "..."}
  conversational  {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
  implicit prompt {"chosen": [whole conversation], "rejected": [whole conversation]} (conversational only)
Any other keys on a row (an id, scores) are kept and written back on export, so a file goes in and
comes out unchanged. A file is parsed and checked whole before anything is stored: one bad line and
nothing of that file is stored, and the error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from sqlalchemy import select

from tether.data import schema as S
from tether.data.store import Store
from tether.errors import InputError, TetherError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class PromptIn:
    text: str
    messages: list | None
    split: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class PreferenceIn:
    prompt: PromptIn
    chosen: tuple[str, list | None]  # (text, messages or None)
    rejected: tuple[str, list | None]
    extra: dict = field(default_factory=dict)
    implicit_prompt: bool = False


@dataclass
class ImportResult:
    path: str
    rows: int
    prompts_added: int = 0
    prompts_existing: int = 0
    responses_added: int = 0
    comparisons_added: int = 0


# --- reading files, with line numbers -----------------------------------------------------------
def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, n, f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(path, n, f"expected a JSON object, got {type(row).__name__}")
            yield n, row


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise InputError(path, 1, "empty CSV file: expected a header row")
        for row in reader:
            if None in row:
                raise InputError(path, reader.line_num, "more values than header columns")
            yield reader.line_num, dict(row)


def _open(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TetherError(f"{p}: file not found")
    return p


def _messages(value: Any, path: Path, line: int, name: str) -> list[dict]:
    """Validate a conversation: a non-empty list of {role, content} with known roles and string content."""
    if not isinstance(value, list) or not value:
        raise InputError(path, line, f"field '{name}': expected a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise InputError(path, line, f"field '{name}[{i}]': expected an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise InputError(path, line, f"field '{name}[{i}].role': expected one of {', '.join(ROLES)}, "
                                         f"got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise InputError(path, line, f"field '{name}[{i}].content': expected a string")
    return value


def _text(value: Any, path: Path, line: int, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, f"field '{name}': expected a non-empty string")
    return value


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


# --- responses to score (`tether score --file`) --------------------------------------------------
def read_responses(path: str | Path) -> list[dict]:
    """Rows of a .jsonl file, {"prompt": text or messages, "response": text, "finished": bool (optional,
    default true: the answer ended by itself, not cut at a length limit)}, as dicts with prompt (text),
    messages, response and finished; any other field is kept as it is."""
    p = _open(path)
    if p.suffix.lower() != ".jsonl":
        raise TetherError(f"{p}: unsupported file type '{p.suffix}' for responses to score (use .jsonl)")
    out = []
    for n, row in _read_jsonl(p):
        for key in ("prompt", "response"):
            if key not in row:
                raise InputError(p, n, f"missing field '{key}'")
        prompt = row.pop("prompt")
        if isinstance(prompt, list):
            msgs = _messages(prompt, p, n, "prompt")
            text = _last_user(msgs)
        else:  # plain text becomes one user message, as for imported prompts
            text = _text(prompt, p, n, "prompt")
            msgs = [{"role": "user", "content": text}]
        response = row.pop("response")
        if not isinstance(response, str):
            raise InputError(p, n, "field 'response': expected a string")
        finished = row.pop("finished", True)
        if not isinstance(finished, bool):
            raise InputError(p, n, f"field 'finished': expected true or false, got {finished!r}")
        out.append({**row, "prompt": text, "messages": msgs, "response": response, "finished": finished})
    if not out:
        raise TetherError(f"{p}: no responses found")
    return out


# --- prompts ------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[PromptIn]:
    """Prompts from .txt (one per line), .jsonl ({"prompt": text or messages} / {"text"} / {"messages"})
    or .csv (a `prompt` or `text` column). Plain-text prompts become one user message, so that
    sampling applies the model's chat template. A `split` field/column is kept; other fields go to meta."""
    p = _open(path)
    out: list[PromptIn] = []
    suffix = p.suffix.lower()
    if suffix == ".txt":
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    out.append(PromptIn(text, [{"role": "user", "content": text}]))
    elif suffix in (".jsonl", ".csv"):
        rows = _read_jsonl(p) if suffix == ".jsonl" else _read_csv(p)
        for n, row in rows:
            key = next((k for k in ("prompt", "text", "messages") if k in row), None)
            if key is None:
                raise InputError(p, n, "missing field: expected 'prompt', 'text' or 'messages'")
            value = row.pop(key)
            split = row.pop("split", None) or None
            if isinstance(value, list):
                msgs = _messages(value, p, n, key)
                out.append(PromptIn(_last_user(msgs), msgs, split, row))
            else:
                text = _text(value, p, n, key)
                out.append(PromptIn(text, [{"role": "user", "content": text}], split, row))
    else:
        raise TetherError(f"{p}: unsupported file type '{p.suffix}' for prompts (use .txt, .jsonl or .csv)")
    if not out:
        raise TetherError(f"{p}: no prompts found")
    return out


def import_prompts(store: Store, path: str | Path, split: str = "train") -> ImportResult:
    prompts = read_prompts(path)
    res = ImportResult(str(path), len(prompts))
    with store.session() as s:
        for pr in prompts:
            _, created = store.get_or_add_prompt(s, pr.text, pr.messages, pr.split or split, str(path), pr.meta)
            res.prompts_added += created
            res.prompts_existing += not created
    return res


# --- demonstrations -----------------------------------------------------------------------------
def read_demonstrations(path: str | Path) -> list[tuple[PromptIn, str]]:
    """Demonstrations as JSONL rows {"messages": [..., {"role": "assistant", "content": ...}]}: the
    last assistant turn is the demonstration, the turns before it the prompt."""
    p = _open(path)
    if p.suffix.lower() != ".jsonl":
        raise TetherError(f"{p}: demonstrations must be JSONL with a 'messages' field per line")
    out = []
    for n, row in _read_jsonl(p):
        if "messages" not in row:
            raise InputError(p, n, "missing field 'messages'")
        msgs = _messages(row.pop("messages"), p, n, "messages")
        if msgs[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in msgs[:-1]):
            raise InputError(p, n, "field 'messages': expected user turn(s) followed by a final assistant turn")
        split = row.pop("split", None)
        out.append((PromptIn(_last_user(msgs[:-1]), msgs[:-1], split, row), msgs[-1]["content"]))
    if not out:
        raise TetherError(f"{p}: no demonstrations found")
    return out


def import_demonstrations(store: Store, path: str | Path, split: str = "train",
                          labeler: str | None = None) -> ImportResult:
    demos = read_demonstrations(path)
    res = ImportResult(str(path), len(demos))
    with store.session() as s:
        lab = store.labeler(s, labeler or f"import:{Path(path).name}", role="import" if labeler is None else "labeler")
        for pr, answer in demos:
            prompt, created = store.get_or_add_prompt(s, pr.text, pr.messages, pr.split or split, str(path), pr.meta)
            res.prompts_added += created
            res.prompts_existing += not created
            s.add(S.Response(prompt_id=prompt.id, text=answer, source="demonstration", policy="human",
                             labeler_id=lab.id, sampling={"source_file": str(path)}))
            res.responses_added += 1
    return res


# --- preferences --------------------------------------------------------------------------------
def _response(value: Any, conversational: bool, path: Path, line: int, name: str) -> tuple[str, list | None]:
    if conversational:
        msgs = _messages(value, path, line, name)
        return msgs[-1]["content"], msgs
    return _text(value, path, line, name), None


def read_preferences(path: str | Path) -> list[PreferenceIn]:
    """TRL-format preference pairs from JSONL (standard, conversational, or conversational with an
    implicit prompt). All rows of a file must share one format."""
    p = _open(path)
    if p.suffix.lower() != ".jsonl":
        raise TetherError(f"{p}: preference pairs must be JSONL (TRL's prompt/chosen/rejected format)")
    out: list[PreferenceIn] = []
    fmt = None
    for n, row in _read_jsonl(p):
        for key in ("chosen", "rejected"):
            if key not in row:
                raise InputError(p, n, f"missing field '{key}'")
        conv = isinstance(row["chosen"], list)
        if "prompt" not in row and not conv:
            raise InputError(p, n, "missing field 'prompt' (an implicit prompt needs the conversational format)")
        row_fmt = ("conversational" if conv else "standard") + ("" if "prompt" in row else " implicit")
        if fmt is not None and row_fmt != fmt:
            raise InputError(p, n, f"this row is {row_fmt} but earlier rows are {fmt}: use one format per file")
        fmt = row_fmt
        chosen_raw, rejected_raw, prompt_raw = row.pop("chosen"), row.pop("rejected"), row.pop("prompt", None)
        if prompt_raw is None:
            c = _messages(chosen_raw, p, n, "chosen")
            r = _messages(rejected_raw, p, n, "rejected")
            k = 0
            while k < min(len(c), len(r)) - 1 and c[k] == r[k]:
                k += 1
            if k == 0:
                raise InputError(p, n, "fields 'chosen'/'rejected': no shared prompt turns before the answers")
            prompt = PromptIn(_last_user(c[:k]), c[:k])
            out.append(PreferenceIn(prompt, (c[-1]["content"], c[k:]), (r[-1]["content"], r[k:]), row, True))
            continue
        if conv:
            pm = _messages(prompt_raw, p, n, "prompt")
            prompt = PromptIn(_last_user(pm), pm)
        else:
            prompt = PromptIn(_text(prompt_raw, p, n, "prompt"), None)
        chosen = _response(chosen_raw, conv, p, n, "chosen")
        rejected = _response(rejected_raw, conv, p, n, "rejected")
        out.append(PreferenceIn(prompt, chosen, rejected, row))
    if not out:
        raise TetherError(f"{p}: no preference pairs found")
    return out


def import_preferences(store: Store, path: str | Path, split: str = "train", labeler: str | None = None,
                       round: int = 0) -> ImportResult:
    """Store each pair as two responses and a comparison (choice 'a' = chosen) by an import labeler."""
    prefs = read_preferences(path)
    res = ImportResult(str(path), len(prefs))
    policy = f"import:{Path(path).name}"
    with store.session() as s:
        lab = store.labeler(s, labeler or policy, role="import" if labeler is None else "labeler")
        seen: dict[tuple, S.Response] = {}

        def response(prompt_id: int, text: str, msgs: list | None) -> S.Response:
            key = (prompt_id, text, json.dumps(msgs, sort_keys=True))
            if key not in seen:
                seen[key] = S.Response(prompt_id=prompt_id, text=text, messages=msgs, source="import",
                                       policy=policy, round=round, sampling={"source_file": str(path)})
                s.add(seen[key])
                res.responses_added += 1
            return seen[key]

        for pref in prefs:
            prompt, created = store.get_or_add_prompt(s, pref.prompt.text, pref.prompt.messages, split, str(path))
            res.prompts_added += created
            res.prompts_existing += not created
            a = response(prompt.id, *pref.chosen)
            b = response(prompt.id, *pref.rejected)
            s.flush()
            meta = {"extra": pref.extra, "implicit_prompt": pref.implicit_prompt}
            s.add(S.Comparison(labeler_id=lab.id, response_a_id=a.id, response_b_id=b.id, choice="a",
                               round=round, meta=meta))
            res.comparisons_added += 1
    return res


@dataclass
class ExportResult:
    path: str
    written: int
    ties: int
    cant_tell: int
    format: str


def export_preferences(store: Store, path: str | Path,
                       format: Literal["auto", "standard", "conversational"] = "auto",
                       round: int | None = None) -> ExportResult:
    """Write stored comparisons as TRL preference JSONL, loadable by `datasets.load_dataset("json", ...)`.

    Ties and can't-tell answers carry no preference and are not written; their counts are returned.
    `auto` writes the conversational format if any prompt is a conversation (plain prompts become one
    user message, so every row has the same types), else the standard format. `standard` writes a
    conversational prompt as its last user turn."""
    with store.session() as s:
        q = select(S.Comparison).order_by(S.Comparison.id)
        if round is not None:
            q = q.where(S.Comparison.round == round)
        comps = list(s.scalars(q))
        resp = {r.id: r for r in s.scalars(select(S.Response).where(
            S.Response.id.in_({c.response_a_id for c in comps} | {c.response_b_id for c in comps})))}
        prompts = {p.id: p for p in s.scalars(select(S.Prompt).where(
            S.Prompt.id.in_({r.prompt_id for r in resp.values()})))}
    decided = [c for c in comps if c.choice in ("a", "b")]
    if format == "auto":
        format = "conversational" if any(prompts[resp[c.response_a_id].prompt_id].messages is not None
                                         for c in decided) else "standard"
    rows = []
    for c in decided:
        win, lose = (c.response_a_id, c.response_b_id) if c.choice == "a" else (c.response_b_id, c.response_a_id)
        prompt = prompts[resp[win].prompt_id]
        if format == "standard":
            row = {"prompt": prompt.text, "chosen": resp[win].text, "rejected": resp[lose].text}
        else:
            pm = prompt.messages or [{"role": "user", "content": prompt.text}]
            cm = resp[win].messages or [{"role": "assistant", "content": resp[win].text}]
            rm = resp[lose].messages or [{"role": "assistant", "content": resp[lose].text}]
            row = ({"chosen": pm + cm, "rejected": pm + rm} if c.meta.get("implicit_prompt")
                   else {"prompt": pm, "chosen": cm, "rejected": rm})
        row.update(c.meta.get("extra", {}))
        rows.append(row)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return ExportResult(str(out), len(rows), sum(c.choice == "tie" for c in comps),
                        sum(c.choice == "cant_tell" for c in comps), format)
