import json

import pytest

from character.io import read_jsonl, run_chunks, write_jsonl


class Killed(Exception):
    pass


def test_resumed_run_equals_uninterrupted(tmp_path):
    items = list(range(10))
    calls = []

    def produce(chunk, seed):
        calls.append(tuple(chunk))
        return [{"x": x, "seed": seed} for x in chunk]

    full = run_chunks(items, 3, produce, tmp_path / "a", "k1", "test")

    def dying(chunk, seed):
        if chunk[0] == 6:
            raise Killed()
        return produce(chunk, seed)

    with pytest.raises(Killed):
        run_chunks(items, 3, dying, tmp_path / "b", "k1", "test")
    # a kill mid-write leaves a partial line: it must be ignored, not crash
    with open(tmp_path / "b" / "k1.jsonl", "a") as f:
        f.write('{"chunk": 2, "rows": [{"x"')
    calls.clear()
    resumed = run_chunks(items, 3, produce, tmp_path / "b", "k1", "test")
    assert resumed == full
    assert calls == [(6, 7, 8), (9,)]  # only the unfinished chunks ran again


def test_jsonl_roundtrip_and_error_names_line(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    path.write_text(json.dumps({"a": 1}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        read_jsonl(path)


def test_second_resume_after_partial_line_keeps_everything(tmp_path):
    items = list(range(6))
    produce = lambda chunk, seed: [{"x": x} for x in chunk]  # noqa: E731
    run_chunks(items[:3], 3, produce, tmp_path, "k", "t")  # chunk 0 done
    with open(tmp_path / "k.jsonl", "a") as f:
        f.write('{"chunk": 1, "ro')
    first = run_chunks(items, 3, produce, tmp_path, "k", "t")
    lines = (tmp_path / "k.jsonl").read_text().splitlines()
    assert [json.loads(line)["chunk"] for line in lines] == [0, 1]
    assert run_chunks(items, 3, lambda c, s: pytest.fail("nothing should rerun"), tmp_path, "k", "t") == first


def test_shipped_data_comes_from_the_repo_the_command_runs_in(tmp_path, monkeypatch):
    from character.eval.requests import load_traits
    from character.io import SHIPPED, shipped

    monkeypatch.chdir(tmp_path)
    assert shipped("traits.txt") == SHIPPED / "traits.txt"  # no data/shipped here: the package's repo
    (tmp_path / "data" / "shipped").mkdir(parents=True)
    (tmp_path / "data" / "shipped" / "traits.txt").write_text("# a clone's own list\ncurious\nterse\n")
    assert load_traits() == ["curious", "terse"]  # a second clone's edited file, not the installed one
