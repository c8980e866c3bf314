"""Simulated labelers label stored samples through the same checked path as people."""

from sqlalchemy import select

from tether.data import schema as S
from tether.feedback.collect import collect_pairs
from tether.feedback.simulate import SimulationConfig, simulate_feedback


def seed_samples(store, n_prompts=30, k=4):
    words = ["Paris is the capital of France.", "I think it might be Lyon, or maybe not, who knows",
             "Paris. Paris. Paris. Paris. Paris. Paris.", "The capital of France is Paris, a city on the Seine."]
    with store.session() as s:
        for i in range(n_prompts):
            p, _ = store.get_or_add_prompt(s, f"What is the capital of France? ({i})",
                                           [{"role": "user", "content": f"What is the capital of France? ({i})"}])
            s.add_all([S.Response(prompt_id=p.id, text=words[j % 4], policy="pi", finished=j != 1)
                       for j in range(k)])


def test_simulated_feedback_is_stored_with_tasks_and_labelers(tmp_path):
    from tether.data.store import Store

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    seed_samples(store)
    counts = simulate_feedback(store, SimulationConfig(items=200, overlap=3, seed=1))
    assert sum(v for k, v in counts.items() if k != "critique") == 600
    assert set(counts) >= {"comparison", "ranking", "rating"}
    c = store.counts()
    assert c["tasks"] == 200 and c["labelers"] == 20 and c["comparisons"] == counts["comparison"]
    with store.session() as s:
        roles = set(s.scalars(select(S.Labeler.role)))
        kinds = {lab.groups["sim_kind"] for lab in s.scalars(select(S.Labeler))}
        assert roles == {"simulated"} and kinds == {"careful", "noisy", "biased", "adversarial", "random"}
        assert s.scalar(select(S.Assignment).limit(1)).status == "done"
    pairs = collect_pairs(store)
    assert pairs.pairs and pairs.by_kind["comparison"] > 0


def test_refuses_without_samples(tmp_path):
    import pytest

    from tether.data.store import Store
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="run `tether sample` first"):
        simulate_feedback(Store(f"sqlite:///{tmp_path / 't.db'}"), SimulationConfig())
