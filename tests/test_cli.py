"""The `tether` command as a user runs it: init, import, sample, export, status, and its errors."""

import json

import pytest
from typer.testing import CliRunner

from tether.cli import app

runner = CliRunner()


def tether(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ws(tmp_path, tiny_model_dir):
    r = tether("init", tmp_path / "ws", "--policy", tiny_model_dir)
    assert r.exit_code == 0, r.output
    return tmp_path / "ws"


def test_init_import_sample_status(ws, tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"Prompt {i}?\n" for i in range(16)))
    r = tether("import", "prompts", tmp_path / "p.txt", "-w", ws)
    assert r.exit_code == 0 and "16 new prompts" in r.output
    r = tether("sample", "--k", 4, "--max-new-tokens", 3, "-w", ws)
    assert r.exit_code == 0, r.output
    assert "64 responses to 16 prompts stored" in r.output
    r = tether("sample", "--k", 4, "-w", ws)
    assert r.exit_code == 0 and "nothing to do" in r.output
    r = tether("status", "-w", ws)
    assert r.exit_code == 0 and "responses" in r.output and "64" in r.output


def test_prefs_in_and_out(ws, tmp_path):
    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad"}]
    (tmp_path / "prefs.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert tether("import", "prefs", tmp_path / "prefs.jsonl", "-w", ws).exit_code == 0
    r = tether("export", "prefs", tmp_path / "out.jsonl", "-w", ws)
    assert r.exit_code == 0 and "1 pairs written" in r.output
    assert [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()] == rows


def test_malformed_line_7_fails_cleanly_and_stores_nothing(ws, tmp_path):
    lines = [json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) for i in range(6)]
    bad = tmp_path / "prefs.jsonl"
    bad.write_text("\n".join(lines + ["{not json", lines[0]]) + "\n")
    r = tether("import", "prefs", bad, "-w", ws)
    assert r.exit_code == 1
    assert f"{bad}, line 7: not valid JSON" in r.output and "Traceback" not in r.output
    r = tether("status", "-w", ws)
    assert "prompts" in r.output and " 0 " in r.output.split("prompts")[1].split("\n")[0]


def test_unknown_model_says_what_it_tried(ws, tmp_path):
    (tmp_path / "p.txt").write_text("Hello?\n")
    tether("import", "prompts", tmp_path / "p.txt", "-w", ws)
    r = tether("sample", "--policy", "no-such-org/no-such-model", "-w", ws)
    assert r.exit_code == 1
    out = " ".join(r.output.split())  # rich wraps long lines
    assert "Could not load model 'no-such-org/no-such-model'" in out and "Tried" in out and "hub id" in out


def test_config_errors_name_the_field(ws):
    (ws / "tether.yaml").write_text((ws / "tether.yaml").read_text() + "sampel: {k: 2}\n")
    r = tether("status", "-w", ws)
    assert r.exit_code == 1 and "tether.yaml: sampel: unknown field" in " ".join(r.output.split())
    (ws / "tether.yaml").write_text("sample:\n  top_p: 3\n")
    r = tether("sample", "-w", ws)
    assert r.exit_code == 1 and "sample.top_p" in r.output


def test_bad_option_value_is_refused(ws):
    r = tether("sample", "--temperature", "-1", "-w", ws)
    assert r.exit_code == 1 and "command line: temperature" in r.output


def test_sample_without_prompts_says_what_to_do(ws):
    r = tether("sample", "-w", ws)
    assert r.exit_code == 1 and "no prompts in split 'train'" in r.output and "tether import prompts" in r.output


def test_init_refuses_existing_workspace_and_missing_workspace_is_explained(ws, tmp_path):
    r = tether("init", ws)
    assert r.exit_code == 1 and "already a workspace" in r.output
    r = tether("status", "-w", tmp_path / "nowhere")
    assert r.exit_code == 1 and "tether init" in r.output


def test_import_feedback_refuses_bad_ranking_and_stores_nothing(ws, tmp_path):
    prefs = [{"prompt": "Q", "chosen": "good", "rejected": "bad"}]
    (tmp_path / "prefs.jsonl").write_text(json.dumps(prefs[0]) + "\n")
    tether("import", "prefs", tmp_path / "prefs.jsonl", "-w", ws)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"kind": "rating", "labeler": "ann", "response_id": 1, "score": 4}) + "\n"
                      + json.dumps({"kind": "ranking", "labeler": "ann", "response_ids": [1, 2, 1]}) + "\n")
    r = tether("import", "feedback", labels, "-w", ws)
    assert r.exit_code == 1 and "line 2: the ranking names response 1 twice" in r.output
    labels.write_text(json.dumps({"kind": "rating", "labeler": "ann", "response_id": 1, "score": 4}) + "\n")
    r = tether("import", "feedback", labels, "-w", ws)
    assert r.exit_code == 0 and "1 ratings" in r.output
