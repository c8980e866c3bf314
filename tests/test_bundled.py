"""Integration on the bundled SmolLM2-135M-Instruct, as a new user runs it from the README:
a new workspace, 16 prompts imported, `tether sample --k 4` stores 64 responses (SQLite, PostgreSQL)."""

import json
from importlib.resources import files

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tether.cli import app
from tether.data import schema as S
from tether.workspace import open_workspace

pytestmark = pytest.mark.bundled
runner = CliRunner()


def run_flow(tmp_path, *init_args):
    ws = tmp_path / "ws"
    bundled = (files("tether") / "assets" / "prompts.jsonl").read_text().splitlines()
    (tmp_path / "p16.jsonl").write_text("\n".join(bundled[:16]) + "\n")
    for args in (["init", ws, *init_args], ["import", "prompts", tmp_path / "p16.jsonl", "-w", ws],
                 ["sample", "--k", "4", "--max-new-tokens", "16", "-w", ws]):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
    assert "64 responses to 16 prompts stored" in r.output
    w = open_workspace(ws)
    with w.store().session() as s:
        rows = list(s.scalars(select(S.Response)))
    assert len(rows) == 64 and {r.policy for r in rows} == {"bundled"} and {r.round for r in rows} == {0}
    assert all(r.text.strip() and r.num_tokens <= 16 for r in rows)
    assert len({r.text for r in rows}) > 32  # sampled (temperature 0.7), not 16 copies of one answer
    return w


def test_sample_64_responses_into_sqlite(tmp_path):
    w = run_flow(tmp_path)
    assert w.database_url.startswith("sqlite:///") and (w.root / "tether.db").is_file()


@pytest.mark.postgres
def test_sample_64_responses_into_postgres(tmp_path, fresh_pg_url):
    url = fresh_pg_url.replace("postgresql+psycopg://", "postgresql://")  # the spelling users type
    w = run_flow(tmp_path, "--database", url)
    assert w.database_url.startswith("postgresql+psycopg://") and not (w.root / "tether.db").exists()
    assert json.loads(json.dumps(w.store().counts()))["responses"] == 64
