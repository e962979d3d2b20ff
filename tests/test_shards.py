"""Shards: prepare the bundled corpus and files, re-read them, refuse broken or mismatched datasets."""

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import lmforge.data.shards as shards
from lmforge.cli.main import main
from lmforge.data.corpus import VALIDATION_PLAYS, shakespeare
from lmforge.data.shards import open_dataset, prepare
from lmforge.errors import DataError
from lmforge.tokenizer import train_tokenizer

FILES = ("meta.json", "tokenizer.json", "train.bin", "val.bin", "train.idx.npy", "val.idx.npy")


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The whole bundled corpus with the char tokenizer (one of the two full runs)."""
    return prepare("shakespeare", tmp_path_factory.mktemp("data") / "shakespeare-char", "char", progress=False)


@pytest.fixture
def corpus_dir(tmp_path):
    """Ten small text files."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i, play in enumerate(shakespeare("train")[:10]):
        (d / f"{i:02d}.txt").write_text(play.text[:3000])
    return d


def find(haystack: np.ndarray, needle: list[int]) -> bool:
    """Whether the ids ``needle`` occur contiguously in ``haystack``."""
    hay, pin = np.asarray(haystack).tobytes(), np.asarray(needle, dtype=haystack.dtype).tobytes()
    at = hay.find(pin)
    while at >= 0 and at % haystack.dtype.itemsize:
        at = hay.find(pin, at + 1)
    return at >= 0


def test_bundled_shards_equal_the_tokenizer_output(bundled):
    tok, eos = bundled.tokenizer, bundled.tokenizer.eos_id
    expected = [i for d in shakespeare("val") for i in tok.encode(d.text) + [eos]]
    assert bundled.val.dtype == np.uint16
    assert bundled.val.tolist() == expected
    for i, play in list(enumerate(shakespeare("train")))[::10]:
        lo, hi = bundled.offsets["train"][i : i + 2]
        assert bundled.train[lo:hi].tolist() == tok.encode(play.text) + [eos]


def test_validation_plays_never_appear_in_train(bundled):
    meta = bundled.meta["splits"]
    assert sorted(meta["val"]["names"]) == sorted(VALIDATION_PLAYS)
    assert not set(meta["train"]["names"]) & set(VALIDATION_PLAYS) and meta["train"]["documents"] == 32
    tok = bundled.tokenizer
    for line in ("Hamlet\n\nACT I\n", "\nHAMLET:\n", "\nMALVOLIO:\n", "\nPROSPERO:\n"):
        assert find(bundled.val, tok.encode(line)) and not find(bundled.train, tok.encode(line)), line


def test_meta_records_what_later_stages_need(bundled):
    meta = json.loads((bundled.path / "meta.json").read_text())
    tok = bundled.tokenizer
    assert meta["tokenizer"] == {
        "kind": "char",
        "fingerprint": tok.fingerprint,
        "vocab_size": tok.vocab_size,
        "file": "tokenizer.json",
    }
    assert meta["dtype"] == "uint16" and meta["separator"] == {"token": "</s>", "id": tok.eos_id}
    assert meta["sources"] == ["shakespeare"]
    for split, docs in (("train", shakespeare("train")), ("val", shakespeare("val"))):
        info = meta["splits"][split]
        assert info["bytes"] == sum(len(d.text.encode()) for d in docs)
        assert info["tokens"] == len(bundled.split(split)) == bundled.offsets[split][-1]
        assert (bundled.path / f"{split}.bin").stat().st_size == 2 * info["tokens"]
    assert sorted(os.listdir(bundled.path)) == sorted(FILES)


def test_prepare_is_deterministic(bundled, tmp_path):
    again = prepare("shakespeare", tmp_path / "again", "char", progress=False)
    match, mismatch, errors = filecmp.cmpfiles(bundled.path, again.path, FILES, shallow=False)
    assert mismatch == [] and errors == []


def test_an_exception_while_writing_leaves_nothing(corpus_dir, tmp_path, monkeypatch):
    real = shards._write_tokens

    def failing(path, *args):
        offsets = real(path, *args)
        if path.name == "val.bin":
            raise OSError("disk full")
        return offsets

    monkeypatch.setattr(shards, "_write_tokens", failing)
    with pytest.raises(OSError, match="disk full"):
        prepare(corpus_dir, tmp_path / "out", "char", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_a_killed_run_leaves_no_complete_looking_dataset(corpus_dir, tmp_path):
    out = tmp_path / "out"
    script = (
        "import os, signal, lmforge.data.shards as s\n"
        "real = s._write_tokens\n"
        "def killed(path, *args):\n"
        "    offsets = real(path, *args)\n"
        "    if path.name == 'val.bin': os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return offsets\n"
        "s._write_tokens = killed\n"
        f"s.prepare({str(corpus_dir)!r}, {str(out)!r}, 'char', progress=False)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "corpus"]
    assert [p.name.startswith(".out.tmp-") for p in leftovers] == [True]
    with pytest.raises(DataError, match="meta.json"):
        open_dataset(leftovers[0])
    with pytest.raises(DataError, match="no such dataset"):
        open_dataset(out)


def test_overwrite(corpus_dir, tmp_path):
    out = tmp_path / "out"
    first = prepare(corpus_dir, out, "char", progress=False)
    with pytest.raises(DataError, match="already exists"):
        prepare(corpus_dir, out, "char", progress=False)
    second = prepare(corpus_dir, out, "char", val_fraction=0.3, overwrite=True, progress=False)
    assert second.meta["splits"]["val"]["documents"] == 3 != first.meta["splits"]["val"]["documents"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]
    with pytest.raises(DataError, match="not an lmforge dataset"):
        prepare(corpus_dir, corpus_dir, "char", overwrite=True, progress=False)  # never replaces other files
    assert len(list(corpus_dir.iterdir())) == 10


def test_text_files_split_by_document(corpus_dir, tmp_path):
    ds = prepare(corpus_dir, tmp_path / "out", "bpe", vocab_size=300, val_fraction=0.2, progress=False)
    names = {s: ds.meta["splits"][s]["names"] for s in ("train", "val")}
    assert len(names["train"]) == 8 and len(names["val"]) == 2 and not set(names["train"]) & set(names["val"])
    assert ds.tokenizer.kind == "bpe" and ds.tokenizer.vocab_size == 300
    text = open(names["val"][0]).read()
    lo, hi = ds.offsets["val"][:2]
    assert ds.tokenizer.decode(ds.val[lo : hi - 1]) == text and ds.val[hi - 1] == ds.tokenizer.eos_id


def test_jsonl_source_and_a_given_tokenizer_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"body": f"record number {i}\n"}) + "\n" for i in range(20)))
    tok = train_tokenizer("char", ["record number 0123456789\n"])
    tok_file = tok.save(tmp_path / "tok.json")
    ds = prepare(f, tmp_path / "out", tok_file, text_field="body", val_fraction=0.25, progress=False)
    assert ds.tokenizer.fingerprint == tok.fingerprint
    assert ds.meta["splits"]["val"]["documents"] == 5 and len(ds.offsets["train"]) == 16


def test_tokenizer_without_eos_concatenates_documents(corpus_dir, tmp_path):
    tok = train_tokenizer("char", [p.read_text() for p in corpus_dir.iterdir()], special_tokens=["<pad>", "<unk>"])
    ds = prepare(corpus_dir, tmp_path / "out", tok, progress=False)
    assert ds.meta["separator"] is None and ds.separator_id is None
    lo, hi = ds.offsets["train"][:2]
    assert tok.decode(ds.train[lo:hi]) == open(ds.meta["splits"]["train"]["names"][0]).read()


def test_large_vocabulary_uses_uint32(tmp_path):
    f = tmp_path / "chars.txt"
    text = "".join(chr(0x20000 + i) for i in range(66_000))
    f.write_text(text + "\n" + text[::-1] + "\n")
    ds = prepare(f, tmp_path / "out", "char", progress=False)
    assert ds.tokenizer.vocab_size > 65536 and ds.train.dtype == np.uint32
    assert ds.tokenizer.decode(ds.train[:-1]) == text + "\n"


def test_open_dataset_refuses_another_tokenizer(bundled):
    other = train_tokenizer("char", ["some other text"])
    with pytest.raises(DataError, match="another tokenizer") as e:
        open_dataset(bundled.path, other)
    assert "\n" not in str(e.value)
    assert open_dataset(bundled.path, bundled.tokenizer).tokenizer.fingerprint == bundled.tokenizer.fingerprint
    assert open_dataset(bundled.path, bundled.path / "tokenizer.json").val.shape == bundled.val.shape


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]), "truncated"),
        (lambda d: (d / "val.bin").unlink(), "missing"),
        (lambda d: (d / "meta.json").unlink(), "no meta.json"),
        (lambda d: (d / "meta.json").write_text("{"), "unreadable"),
        (lambda d: (d / "val.idx.npy").unlink(), "offsets"),
        (lambda d: np.save(d / "train.idx.npy", np.array([0, 5])), "offsets"),
        (
            lambda d: (d / "tokenizer.json").write_text(
                (d / "tokenizer.json").read_text().replace('"<pad>"', '"<PAD>"')
            ),
            "changed",
        ),
    ],
)
def test_open_dataset_refuses_broken_directories(corpus_dir, tmp_path, damage, message):
    ds = prepare(corpus_dir, tmp_path / "out", "char", progress=False)
    damage(ds.path)
    with pytest.raises(DataError, match=message) as e:
        open_dataset(ds.path)
    assert "\n" not in str(e.value)


def test_cli_prepare(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "--corpus",
                str(corpus_dir),
                "--tokenizer",
                "char",
                "--out",
                str(out),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["val"]["documents"] == 1 and summary["dtype"] == "uint16"
    assert main(["prepare", "--corpus", str(corpus_dir), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    shutil.rmtree(out)
