"""Import and export: prompts, demonstrations, TRL preference pairs; bad input refused whole."""

import json

import pytest

from tether.data import io
from tether.errors import InputError, TetherError

CONV = [
    {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue, on a clear day."}],
     "rejected": [{"role": "assistant", "content": "Green <b>obviously</b>."}], "id": "x1"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "22"}], "id": "x2"},
    # same prompt and chosen answer again, against another rejected answer
    {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue, on a clear day."}],
     "rejected": [{"role": "assistant", "content": "Purple."}], "id": "x3"},
]
STANDARD = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Allepipolis."},
    {"prompt": "Unicode: ", "chosen": "héllo ✓ \"quoted\"\nnew line", "rejected": "no", "score_chosen": 9.5},
]
IMPLICIT = [
    {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
     "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("rows", [CONV, STANDARD, IMPLICIT], ids=["conversational", "standard", "implicit"])
def test_preference_round_trip_equals_input(store, tmp_path, rows):
    """TRL-format JSONL in -> database -> out gives back exactly the input rows."""
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = io.import_preferences(store, src)
    assert res.comparisons_added == len(rows)
    out = io.export_preferences(store, tmp_path / "out.jsonl")
    assert out.written == len(rows)
    assert read_jsonl(tmp_path / "out.jsonl") == rows


def test_shared_responses_are_stored_once(store, tmp_path):
    """A prompt and answer that recur across rows are one prompt and one response in the database."""
    res = io.import_preferences(store, write_jsonl(tmp_path / "in.jsonl", CONV))
    assert (res.prompts_added, res.responses_added) == (2, 5)
    assert store.counts()["comparisons"] == 3


def test_export_loads_with_datasets(store, tmp_path):
    """The exported file is a dataset for TRL: datasets.load_dataset('json') reads it."""
    datasets = pytest.importorskip("datasets")
    io.import_preferences(store, write_jsonl(tmp_path / "in.jsonl", CONV))
    io.export_preferences(store, tmp_path / "out.jsonl")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "out.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 3
    assert ds[0]["chosen"][0]["content"] == "Blue, on a clear day."
    assert set(ds.column_names) >= {"prompt", "chosen", "rejected"}


def test_export_skips_ties_and_counts_them(store, tmp_path):
    """Ties and can't-tell carry no preference: counted, not written; choice 'b' flips the pair."""
    from sqlalchemy import select

    from tether.data import schema as S

    io.import_preferences(store, write_jsonl(tmp_path / "in.jsonl", STANDARD))
    with store.session() as s:
        comps = list(s.scalars(select(S.Comparison).order_by(S.Comparison.id)))
        comps[0].choice = "b"
        c = comps[1]
        s.add(S.Comparison(labeler_id=c.labeler_id, response_a_id=c.response_a_id,
                           response_b_id=c.response_b_id, choice="tie"))
        s.add(S.Comparison(labeler_id=c.labeler_id, response_a_id=c.response_a_id,
                           response_b_id=c.response_b_id, choice="cant_tell"))
    res = io.export_preferences(store, tmp_path / "out.jsonl")
    assert (res.written, res.ties, res.cant_tell) == (2, 1, 1)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert rows[0]["chosen"] == " Allepipolis." and rows[0]["rejected"] == " Paris."


def test_malformed_line_7_names_file_and_line_and_stores_nothing(store, tmp_path):
    """A bad JSON line 7 -> error naming the file and line 7; no row of that file is stored."""
    rows = [json.dumps(r) for r in (CONV * 3)[:6]] + ['{"prompt": "oops", "chosen": '] + [json.dumps(CONV[0])]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError) as e:
        io.import_preferences(store, path)
    assert str(path) in str(e.value) and "line 7" in str(e.value)
    assert e.value.line == 7
    assert all(n == 0 for n in store.counts().values())


@pytest.mark.parametrize("row, field", [
    ({"prompt": "p", "chosen": "c"}, "rejected"),
    ({"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "robot", "content": "x"}],
      "rejected": [{"role": "assistant", "content": "y"}]}, "chosen[0].role"),
    ({"prompt": [{"role": "user", "content": 3}], "chosen": [{"role": "assistant", "content": "x"}],
      "rejected": [{"role": "assistant", "content": "y"}]}, "prompt[0].content"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt"),
    ({"chosen": "a", "rejected": "b"}, "prompt"),
])
def test_bad_fields_are_named(tmp_path, row, field):
    """Each kind of bad row names the line and the field at fault."""
    first = CONV[0] if isinstance(row.get("chosen"), list) else STANDARD[0]
    path = write_jsonl(tmp_path / "bad.jsonl", [first, row])
    with pytest.raises(InputError, match=r"line 2: .*" + field.replace("[", r"\[").replace("]", r"\]")):
        io.read_preferences(path)


def test_mixed_formats_in_one_file_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [STANDARD[0], CONV[0]])
    with pytest.raises(InputError, match="line 2: .*one format per file"):
        io.read_preferences(path)


def test_prompts_from_txt_jsonl_csv(store, tmp_path):
    """Three prompt formats; blank lines skipped; split and extra columns kept; duplicates stored once."""
    (tmp_path / "p.txt").write_text("How do I bake bread?\n\n  Why is the sky blue?\n")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "How do I bake bread?"},
                                       {"prompt": [{"role": "user", "content": "Hi"}], "split": "eval", "topic": "x"}])
    (tmp_path / "p.csv").write_text('prompt,split,topic\n"A prompt, with a comma",eval,food\nPlain,,misc\n')
    r1 = io.import_prompts(store, tmp_path / "p.txt")
    r2 = io.import_prompts(store, tmp_path / "p.jsonl")
    r3 = io.import_prompts(store, tmp_path / "p.csv")
    assert (r1.prompts_added, r2.prompts_added, r2.prompts_existing, r3.prompts_added) == (2, 1, 1, 2)
    from sqlalchemy import select

    from tether.data import schema as S
    with store.session() as s:
        rows = {p.text: p for p in s.scalars(select(S.Prompt))}
    assert rows["  Why is the sky blue?"].messages == [{"role": "user", "content": "  Why is the sky blue?"}]
    assert rows["Hi"].split == "eval" and rows["Hi"].meta == {"topic": "x"}
    assert rows["A prompt, with a comma"].split == "eval" and rows["Plain"].split == "train"


def test_csv_without_prompt_column_names_line(tmp_path):
    (tmp_path / "p.csv").write_text("question\nwhat?\n")
    with pytest.raises(InputError, match=r"p\.csv, line 2: missing field"):
        io.read_prompts(tmp_path / "p.csv")


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "p.parquet").write_text("x")
    with pytest.raises(TetherError, match="unsupported file type"):
        io.read_prompts(tmp_path / "p.parquet")
    with pytest.raises(TetherError, match="file not found"):
        io.read_prompts(tmp_path / "nope.txt")


def test_demonstrations(store, tmp_path):
    """A demonstration's last assistant turn is the response; the turns before it are the prompt."""
    path = write_jsonl(tmp_path / "demos.jsonl", [
        {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]},
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Help"},
                      {"role": "assistant", "content": "Of course."}]},
    ])
    res = io.import_demonstrations(store, path, labeler="alice")
    assert (res.prompts_added, res.responses_added) == (2, 2)
    from sqlalchemy import select

    from tether.data import schema as S
    with store.session() as s:
        resp = s.scalars(select(S.Response).order_by(S.Response.id)).all()
        assert [r.text for r in resp] == ["Hi!", "Of course."]
        assert {r.source for r in resp} == {"demonstration"}
        assert resp[1].prompt.messages == [{"role": "system", "content": "Be kind."},
                                           {"role": "user", "content": "Help"}]
        assert s.get(S.Labeler, resp[0].labeler_id).name == "alice"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(InputError, match="line 1: .*final assistant turn"):
        io.read_demonstrations(bad)
