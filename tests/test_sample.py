"""`tether sample` and the rollout underneath: K per prompt, stored by round, resumable, reproducible."""

import json

import pytest
from sqlalchemy import select

from tether import models
from tether.config import SampleConfig
from tether.data import schema as S
from tether.data.io import import_prompts
from tether.recipes import sample as recipe
from tether.rollout import generate
from tether.workspace import init_workspace


def add_prompts(ws, tmp_path, n=16):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question number {i}: " + "why? " * (i % 5)}) + "\n"
                            for i in range(n)))
    import_prompts(ws.store(), path)


def responses(ws):
    with ws.store().session() as s:
        return list(s.scalars(select(S.Response).order_by(S.Response.id)))


def test_sample_stores_k_per_prompt_with_round_and_settings(workspace, tmp_path, tiny_model_dir):
    add_prompts(workspace, tmp_path)
    cfg = SampleConfig(k=4, max_new_tokens=6, batch_size=24, seed=7)
    res = recipe.run(workspace, cfg, show_progress=False)
    assert (res.responses_added, res.prompts_sampled) == (64, 16)
    rows = responses(workspace)
    assert len(rows) == 64
    per_prompt = {}
    for r in rows:
        per_prompt[r.prompt_id] = per_prompt.get(r.prompt_id, 0) + 1
        assert r.round == 0 and r.source == "sample" and r.policy == str(tiny_model_dir)
        assert r.checkpoint == str(tiny_model_dir.resolve()) and r.run_id == res.run_id
        assert r.sampling["temperature"] == 0.7 and r.sampling["seed"] == 7 and r.sampling["max_new_tokens"] == 6
        assert r.seed is not None and 1 <= r.num_tokens <= 6
        assert r.finished or r.num_tokens == 6  # unfinished means cut off at the limit
    assert set(per_prompt.values()) == {4}
    with workspace.store().session() as s:
        run = s.get(S.Run, res.run_id)
        assert run.status == "done" and run.metrics["responses"] == 64 and run.metrics["new_tokens"] == res.new_tokens


def test_sample_tops_up_to_k_and_separates_rounds(workspace, tmp_path):
    """A second run adds only what is missing (so a killed run resumes); a new round samples afresh."""
    add_prompts(workspace, tmp_path, n=5)
    model, tok = models.load_policy(workspace.config.policy)
    kw = dict(model=model, tokenizer=tok, show_progress=False)
    assert recipe.run(workspace, SampleConfig(k=2, max_new_tokens=3), **kw).responses_added == 10
    assert recipe.run(workspace, SampleConfig(k=4, max_new_tokens=3), **kw).responses_added == 10
    again = recipe.run(workspace, SampleConfig(k=4, max_new_tokens=3), **kw)
    assert (again.responses_added, again.prompts_complete) == (0, 5)
    assert recipe.run(workspace, SampleConfig(k=4, max_new_tokens=3), round=1, **kw).responses_added == 20
    rows = responses(workspace)
    assert [sum(r.round == rd for r in rows) for rd in (0, 1)] == [20, 20]


def test_sample_only_the_configured_split(workspace, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "split": "train"}\n{"prompt": "b", "split": "eval"}\n')
    import_prompts(workspace.store(), path)
    res = recipe.run(workspace, SampleConfig(k=2, max_new_tokens=2, split="eval"), show_progress=False)
    assert res.responses_added == 2
    with workspace.store().session() as s:
        texts = {s.get(S.Prompt, r.prompt_id).text for r in s.scalars(select(S.Response))}
    assert texts == {"b"}


@pytest.mark.postgres
def test_sample_into_postgres(tmp_path, tiny_model_dir, fresh_pg_url):
    ws = init_workspace(tmp_path / "pg-ws", database=fresh_pg_url, policy=str(tiny_model_dir))
    add_prompts(ws, tmp_path)
    res = recipe.run(ws, SampleConfig(k=4, max_new_tokens=4), show_progress=False)
    assert res.responses_added == 64
    assert ws.store().counts()["responses"] == 64 and ws.database_url.startswith("postgresql+psycopg://")


def test_left_padding_gives_the_same_greedy_tokens_as_one_by_one(tiny_model_dir):
    """Batching prompts of different lengths (left-padded, masked) changes nothing under greedy decoding."""
    model, tok = models.load_policy(str(tiny_model_dir))
    prompts = [(i, models.encode_prompt(tok, [{"role": "user", "content": "word " * (3 * i + 1)}]))
               for i in range(4)]
    assert len({len(p) for _, p in prompts}) == 4
    batched = {g.key: g.token_ids for b in generate(model, tok, prompts, temperature=0, max_new_tokens=8,
                                                    batch_size=4) for g in b}
    for key, ids in prompts:
        (alone,) = next(generate(model, tok, [(key, ids)], temperature=0, max_new_tokens=8))
        assert alone.token_ids == batched[key]


def test_seed_makes_sampling_reproducible(tiny_model_dir):
    model, tok = models.load_policy(str(tiny_model_dir))
    prompts = [(i, models.encode_prompt(tok, "Tell me something")) for i in range(4)]

    def texts(seed):
        return [g.token_ids for b in generate(model, tok, prompts, temperature=1.0, max_new_tokens=8,
                                              batch_size=2, seed=seed) for g in b]

    assert texts(3) == texts(3)
    assert texts(3) != texts(4)


def test_cut_off_responses_are_marked_unfinished(tiny_model_dir):
    """Hitting max_new_tokens without EOS: finished is False and the text has no end-of-turn token."""
    model, tok = models.load_policy(str(tiny_model_dir))
    gens = [g for b in generate(model, tok, [(0, models.encode_prompt(tok, "Hi"))] * 3, temperature=0.0,
                                max_new_tokens=5) for g in b]
    for g in gens:
        assert not g.finished and g.num_tokens == 5 == len(g.token_ids)
        assert tok.eos_token_id not in g.token_ids and "<|im_end|>" not in g.text
