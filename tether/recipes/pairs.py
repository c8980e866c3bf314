"""DPO's data: preference pairs as token ids, and the batch layout that scores a pair in one row.

`encode_pair` splits prompt‖chosen and prompt‖rejected (as `tether.reward.encode_pair_text` writes them)
where they part from the prompt's own tokens; `collate` lays a batch out for one forward pass, with each
prompt and each distinct response computed once (a response never attends to another) or TRL's layout
of 2B rows; `response_counts` is how many tokens each response scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tether import models, reward
from tether.recipes.rm import PreferenceExample


@dataclass
class PairTokens:
    prompt: list[int]
    chosen: list[int]  # response tokens only; the loss reads these
    rejected: list[int]


def encode_pair(tokenizer, ex: PreferenceExample, max_length: int) -> PairTokens:
    """Prompt and response tokens as `reward.encode_pair_text` writes prompt‖response: a finished chat
    answer ends with the template's end of turn, a cut-off one with its last token. The prompt is where
    both sequences part from the prompt's own tokens (as TRL splits them)."""
    prompt = models.encode_prompt(tokenizer, ex.prompt)
    c = reward.encode_pair_text(tokenizer, ex.prompt, ex.chosen, ex.chosen_finished)
    r = reward.encode_pair_text(tokenizer, ex.prompt, ex.rejected, ex.rejected_finished)
    k = len(os.path.commonprefix([prompt, c, r]))  # works on lists: the longest shared prefix
    p, c, r = c[:k], c[k:], r[k:]
    if k + max(len(c), len(r)) > max_length:
        keep = min(k, max(max_length - max(len(c), len(r)), max_length // 4))
        bos = tokenizer.bos_token_id
        head = p[:1] if bos is not None and p[:1] == [bos] and keep > 0 else []
        p = head + (p[k - (keep - len(head)):] if keep > len(head) else [])
        c, r = c[:max_length - len(p)], r[:max_length - len(p)]
    return PairTokens(p, c, r)


def read_pairs(path: str | Path) -> list[PreferenceExample]:
    """TRL-format preference JSONL (standard or conversational) as pairs of finished answers."""
    from tether.data.io import read_preferences

    return [PreferenceExample(prompt=p.prompt.messages if p.prompt.messages is not None else p.prompt.text,
                              chosen=p.chosen[0], rejected=p.rejected[0]) for p in read_preferences(path)]


def collate(items: list[PairTokens], pad_id: int, share_prompt: bool = True) -> dict[str, torch.Tensor]:
    """Rows for one forward pass and where to read each response token's log-prob.

    share_prompt: one row per distinct prompt of the batch, holding that prompt once and then each distinct
    response of its pairs once (a ranking's K answers make K(K-1)/2 pairs but K responses here), with
    attention_mask (R, 1, T, T) bool, True where query t may see key s: causal, and a response sees the
    prompt and itself, never another response; positions restart after the prompt. Otherwise TRL's layout:
    chosen rows then rejected rows (R = 2B), attention_mask (R, T). Both give input_ids and position_ids
    (R, T); src (N,) flat index row·T + t of the hidden state that predicts each scored response token,
    tgt (N,) that token, seg (N,) the index of its response (< 2B), and pick (B, 2) the index of each
    pair's [chosen, rejected] response."""
    rows, pos, kinds, src, tgt, seg = [], [], [], [], [], []
    n_resp = 0

    def add_row(prompt, responses):  # responses: token lists; returns their response indices
        nonlocal n_resp
        r, n = len(rows), len(prompt)
        ids, p, kind, at = list(prompt), list(range(n)), [0] * n, []
        for j, toks in enumerate(responses):
            start = len(ids)
            before = ([n - 1] + [start + i for i in range(len(toks) - 1)])[:len(toks)]  # predicts token i
            for i, b in enumerate(before):
                if b >= 0:
                    src.append((r, b)), tgt.append(toks[i]), seg.append(n_resp)
            ids += toks
            p += range(n, n + len(toks))
            kind += [1 + j] * len(toks)
            at.append(n_resp)
            n_resp += 1
        rows.append(ids), pos.append(p), kinds.append(kind)
        return at

    if share_prompt:  # group by prompt tokens, then each distinct response of the group once
        groups: dict[tuple, dict[tuple, int]] = {}
        for it in items:
            g = groups.setdefault(tuple(it.prompt), {})
            for toks in (it.chosen, it.rejected):
                g.setdefault(tuple(toks), len(g))
        where = {}
        for prompt, responses in groups.items():
            at = add_row(list(prompt), [list(r) for r in responses])
            where |= {(prompt, r): at[j] for r, j in responses.items()}
        pick = [[where[(tuple(it.prompt), tuple(t))] for t in (it.chosen, it.rejected)] for it in items]
    else:
        for side in (0, 1):
            for it in items:
                add_row(it.prompt, [it.rejected if side else it.chosen])
        pick = [[i, len(items) + i] for i in range(len(items))]
    width = max(len(x) for x in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (R, T)
    kind = torch.full((len(rows), width), -1, dtype=torch.long)  # (R, T) 0 prompt, j response j of the row, -1 pad
    for i, (ids, p, k) in enumerate(zip(rows, pos, kinds)):
        input_ids[i, :len(ids)], position_ids[i, :len(p)], kind[i, :len(k)] = (torch.tensor(ids), torch.tensor(p),
                                                                              torch.tensor(k))
    if share_prompt:
        t = torch.arange(width)
        causal = (t[None, :] <= t[:, None])[None]  # (1, T, T) query t sees key s <= t
        key, query = kind[:, None, :], kind[:, :, None]  # (R, 1, T), (R, T, 1)
        mask = causal & (key >= 0) & ((key == 0) | (key == query))  # (R, T, T) the prompt, or its own response
        mask |= torch.eye(width, dtype=torch.bool)[None] & (kind < 0)[:, :, None]  # padding sees itself (no NaN)
        mask = mask[:, None]  # (R, 1, T, T)
    else:
        mask = (kind >= 0).long()  # (R, T)
    flat = torch.tensor([r * width + b for r, b in src], dtype=torch.long)  # (N,)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "src": flat,
            "tgt": torch.tensor(tgt, dtype=torch.long), "seg": torch.tensor(seg, dtype=torch.long),
            "pick": torch.tensor(pick, dtype=torch.long).view(len(items), 2)}


def response_counts(toks: list[PairTokens]) -> torch.Tensor:
    """(N, 2) scored tokens per response (the first one is unscored only when the prompt is empty)."""
    return torch.tensor([[len(t.chosen) - (not t.prompt), len(t.rejected) - (not t.prompt)] for t in toks],
                        dtype=torch.float32).clamp_min(0)
