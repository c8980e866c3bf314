"""Shared fixtures: offline, one thread, tiny random models with the bundled tokenizer, a PostgreSQL
database per test session, and fresh workspaces."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import uuid  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

PG_ADMIN_URL = os.environ.get("TETHER_TEST_PG_URL",
                              "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def bundled_tokenizer():
    """The bundled SmolLM2 tokenizer (converts the bundled model once into the tether cache)."""
    from tether.models import load_tokenizer

    return load_tokenizer("bundled")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer):
    """A 2-layer Llama with random weights and the bundled tokenizer, saved as a local HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bundled_tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=bundled_tokenizer.bos_token_id, eos_token_id=bundled_tokenizer.eos_token_id,
                      pad_token_id=bundled_tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    bundled_tokenizer.save_pretrained(path)
    return path


def _pg_available() -> str | None:
    import psycopg

    url = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        psycopg.connect(url, connect_timeout=3).close()
        return None
    except psycopg.OperationalError as e:
        return str(e).strip().splitlines()[0]


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test session, dropped at the end.

    Skipped when no server answers, except on CI (CI=true), where that is a failure."""
    import psycopg

    problem = _pg_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {problem}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {problem}")
    name = f"tether_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_url(pg_url):
    """An empty PostgreSQL database for one test (its schema is dropped before use)."""
    import psycopg

    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tether.db'}"
    return request.getfixturevalue("fresh_pg_url")


@pytest.fixture
def store(db_url):
    from tether.data.store import Store

    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture
def workspace(tmp_path, tiny_model_dir):
    """A SQLite workspace whose policy is the tiny random model."""
    from tether.workspace import init_workspace

    return init_workspace(tmp_path / "ws", policy=str(tiny_model_dir))


WORDS = ["<pad>", "<eos>", "<unk>", "red", "green", "blue", "yellow", "black", "white", "brown", "pink",
         "cat", "dog", "sky", "sea", "tree", "say", "a", "the", "color", "is", "name", "please"]


@pytest.fixture(scope="session")
def word_model_dir(tmp_path_factory):
    """A 2-layer Llama with random weights over a 23-word vocabulary (word-level tokenizer, no chat
    template): small enough that a random policy says any given word often, so RL has signal."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    path = tmp_path_factory.mktemp("word-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def decode_precision(monkeypatch):
    """Records, for each call of `tether.rollout.generate` (as RL recipes call it), whether it decoded
    in bf16: under CPU bf16 autocast, or with bf16 weights (`rollout.SamplingCopy`)."""
    import torch

    from tether import rollout

    seen: list[bool] = []
    real = rollout.generate

    def spy(*a, **kw):
        model = a[0] if a else kw["model"]
        seen.append(torch.is_autocast_enabled("cpu") or next(model.parameters()).dtype == torch.bfloat16)
        yield from real(*a, **kw)

    monkeypatch.setattr(rollout, "generate", spy)
    return seen
