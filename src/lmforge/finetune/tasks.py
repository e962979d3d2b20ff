"""Task datasets: labelled rows from CSV / JSONL files (or the Shakespeare genre task) -> batches.

Three tasks, each a set of named fields per row:

==============  ===========================================  ======================================
task            fields                                       model and labels
==============  ===========================================  ======================================
``classify``    ``text``, optional ``text_pair``, ``label``  encoder or decoder + classifier; one id
``seq2seq``     ``source``, ``target``                       encoder-decoder; labels = target + EOS
``completion``  ``prompt``, ``completion``                   decoder; loss on the completion only
==============  ===========================================  ======================================

Labels are read as strings and mapped to ids in sorted order; the mapping is saved with the model.
Every row is checked before anything trains: a missing field, an empty text, or (in a validation
file) a label the training file did not have raises one :class:`~lmforge.errors.DataError` that names
the file and the line numbers, so no model is ever trained on bad rows.

Two tasks are built from the bundled plays, both split by play with the standard validation plays
(one per folder), so no play, and no character, is on both sides:

- genre: passages labelled by their play's folder (comedy, history, tragedy, roman, romance, problem);
- restoration (seq2seq or completion): a few lines of a speech with case and punctuation removed
  (:func:`restoration_source`) as the source, the lines as written as the target.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import special_id

TASKS = ("classify", "seq2seq", "completion")
REQUIRED = {"classify": ("text", "label"), "seq2seq": ("source", "target"), "completion": ("prompt", "completion")}
OPTIONAL = {"classify": ("text_pair",), "seq2seq": (), "completion": ()}
TASK_ARCHS = {
    "classify": ("encoder", "decoder", "encoder-decoder"),
    "seq2seq": ("encoder-decoder",),
    "completion": ("decoder",),
}
MAX_LINES_SHOWN = 5


# ----------------------------------------------------------------------------------------------
# Reading and checking rows

Row = tuple[int, dict]  # (line number in the file, fields)


def read_rows(path: str | Path) -> tuple[list[Row], list[str]]:
    """Rows of a ``.csv`` / ``.tsv`` (header line first) or ``.jsonl`` file, with their line numbers,
    and the problems met while reading (``"line 7: invalid JSON"``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # universal newlines; a byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows: list[Row] = []
    problems: list[str] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        for i, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                problems.append(f"line {i}: invalid JSON")
                continue
            if not isinstance(obj, dict):
                problems.append(f"line {i}: not a JSON object")
                continue
            rows.append((i, obj))
    elif suffix in (".csv", ".tsv"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        header = next(reader, [])
        while True:
            line = reader.line_num + 1  # where the row starts (a quoted cell may span lines)
            cells = next(reader, None)
            if cells is None:
                break
            if not cells:  # a blank line
                continue
            if len(cells) > len(header):
                problems.append(f"line {line}: {len(cells)} cells, the header has {len(header)} columns")
            rows.append((line, dict(zip(header, cells))))
    else:
        raise DataError(f"{path}: unknown task file type {suffix or '(none)'!r}; use .csv, .tsv or .jsonl")
    return rows, problems


def _raise_bad(path: str | Path, problems: list[str], n_rows: int) -> None:
    shown = "; ".join(problems[:MAX_LINES_SHOWN])
    more = f"; and {len(problems) - MAX_LINES_SHOWN} more" if len(problems) > MAX_LINES_SHOWN else ""
    raise DataError(
        f"{path}: {len(problems)} bad row(s) of {n_rows}: {shown}{more}; fix or remove them (nothing was trained)"
    )


def check_rows(path: str | Path, task: str, labels: Sequence[str] | None = None) -> list[dict]:
    """The rows of a task file as dicts of strings; raises one DataError naming every bad line.

    ``labels``: the known class names (validation files); a label outside them is an error.
    """
    if task not in TASKS:
        raise ConfigError(f"task: unknown {task!r}; choose one of {', '.join(TASKS)}")
    rows, problems = read_rows(path)
    for name in REQUIRED[task]:
        if rows and all(name not in obj for _, obj in rows):
            fields = sorted({k for _, obj in rows for k in obj})
            raise DataError(
                f"{path}: no row has the field {name!r} (found: {', '.join(fields)}); "
                f"a {task} file needs {', '.join(REQUIRED[task])}"
            )
    good = []
    known = set(labels) if labels is not None else None
    for line, obj in rows:
        row, bad = {}, None
        for name in REQUIRED[task] + OPTIONAL[task]:
            value = obj.get(name)
            if value is None or (name in OPTIONAL[task] and value == ""):
                if name in REQUIRED[task]:
                    bad = bad or f"line {line}: missing field {name!r}"
                continue
            value = str(value)  # labels may be numbers in JSON; they are names here
            if not value.strip():
                bad = bad or f"line {line}: empty {name!r}"
            row[name] = value
        if bad is None and known is not None and task == "classify" and row["label"] not in known:
            bad = f"line {line}: unknown label {row['label']!r} (training labels: {', '.join(sorted(known))})"
        if bad:
            problems.append(bad)
        else:
            good.append(row)
    if problems:
        problems.sort(key=lambda p: int(p.split(":")[0].split()[1]))
        _raise_bad(path, problems, len(rows))
    if not good:
        raise DataError(f"{path}: no rows; expected fields {', '.join(REQUIRED[task])}")
    return good


# ----------------------------------------------------------------------------------------------
# Tokenising


@dataclass
class Example:
    input_ids: list[int]
    labels: int | list[int]  # a class id, or target ids aligned with the logits (-100 ignored)
    token_type_ids: list[int] | None = None


@dataclass
class TaskDataset:
    """Tokenised examples of one task and split, with what evaluation needs to report."""

    task: str
    examples: list[Example]
    label_names: list[str] | None = None  # classify: class names in id order
    sources: list[str] = field(default_factory=list)  # seq2seq / completion: source or prompt texts
    references: list[str] = field(default_factory=list)  # seq2seq / completion: the expected outputs

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def class_ids(self) -> list[int]:
        return [int(e.labels) for e in self.examples]


def _plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without the [CLS] / [SEP] a BERT tokenizer may add (we add our own)."""
    ids = list(tokenizer.encode(text))
    cls, sep = special_id(tokenizer, "cls"), special_id(tokenizer, "sep")
    if ids and cls is not None and ids[0] == cls:
        ids = ids[1:]
    if ids and sep is not None and ids[-1] == sep:
        ids = ids[:-1]
    return ids


def _fit_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer of two token lists first until both fit in ``budget`` tokens."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def encode_classification(
    tokenizer, arch: str, text: str, pair: str | None, max_len: int
) -> tuple[list[int], list[int]]:
    """(input ids, segment ids). Encoder: [CLS] a [SEP] (b [SEP]). Decoder: a (SEP b) EOS, so the
    last token, whose state the head reads, has seen the whole text; an encoder-decoder's encoder
    reads the same (its pretraining sources end with EOS)."""
    a = _plain_ids(tokenizer, text)
    b = _plain_ids(tokenizer, pair) if pair else []
    cls, sep, eos = special_id(tokenizer, "cls"), special_id(tokenizer, "sep"), special_id(tokenizer, "eos")
    if arch == "encoder":
        head, mid = [cls] if cls is not None else [], [sep] if sep is not None else []
        n_special = len(head) + len(mid) * (2 if b else 1)
        a, b = _fit_pair(a, b, max_len - n_special)
        ids = head + a + mid
        types = [0] * len(ids)
        if b:
            ids += b + mid
            types += [1] * (len(b) + len(mid))
        return ids, types
    join = sep if sep is not None else eos
    end = [eos] if eos is not None else []
    mid = [join] if b and join is not None else []
    a, b = _fit_pair(a, b, max_len - len(mid) - len(end))
    ids = a + mid + b + end
    return ids, [0] * len(ids)


def encode_seq2seq(tokenizer, source: str, target: str, max_len: int) -> Example:
    """Source ids (+ EOS) as input; target ids + EOS as labels (the model shifts them right)."""
    eos = special_id(tokenizer, "eos")
    end = [eos] if eos is not None else []
    src = _plain_ids(tokenizer, source)[: max_len - len(end)] + end
    tgt = _plain_ids(tokenizer, target)[: max_len - len(end)] + end
    return Example(src, tgt)


def fit_source(tokenizer, source: str, max_len: int) -> str:
    """The source as the model sees it: cut, like ``encode_seq2seq`` cuts it, to ``max_len`` tokens
    with its EOS, so that generating from it (the validation metrics) fits the encoder's positions."""
    budget = max_len - (1 if special_id(tokenizer, "eos") is not None else 0)
    ids = _plain_ids(tokenizer, source)
    if len(ids) <= budget:
        return source
    for cut in range(budget, 0, -1):  # decoding and encoding again may not give back the same ids
        text = tokenizer.decode(ids[:cut]).strip()
        if len(_plain_ids(tokenizer, text)) <= budget:
            return text
    return ""


def encode_completion(tokenizer, prompt: str, completion: str, max_len: int, start_id: int | None = None) -> Example:
    """``start_id`` (default: BOS), prompt and completion as one sequence; labels (aligned with the
    logits) are the next tokens of the completion and -100 over the prompt. A prompt too long is
    cut from the left."""
    start = start_id if start_id is not None else special_id(tokenizer, "bos")
    eos = special_id(tokenizer, "eos")
    p = ([start] if start is not None else []) + _plain_ids(tokenizer, prompt)
    c = _plain_ids(tokenizer, completion) + ([eos] if eos is not None else [])
    c = c[:max_len]  # the sequence is max_len + 1 tokens: inputs drop the last, labels the first
    p = p[max(0, len(p) - (max_len + 1 - len(c))) :] if len(p) + len(c) > max_len + 1 else p
    if not p:  # at least one input token before the first predicted one
        p, c = c[:1], c[1:]
    ids = p + c
    labels = [-100] * (len(p) - 1) + c
    return Example(ids[:-1], labels)


def encode_rows(
    rows: list[dict],
    task: str,
    tokenizer,
    arch: str,
    max_len: int,
    label_names: list[str] | None = None,
    start_id: int | None = None,
) -> TaskDataset:
    """Tokenise checked rows. ``label_names`` (classify): the class names in id order; ``start_id``
    (completion): the token before each prompt (default BOS; the model's start token, so that
    training and generation agree)."""
    if arch not in TASK_ARCHS[task]:
        raise ConfigError(f"task: {task!r} needs a model of kind {' or '.join(TASK_ARCHS[task])}, got an {arch}")
    if task == "classify":
        label_names = label_names or sorted({r["label"] for r in rows})
        index = {name: i for i, name in enumerate(label_names)}
        examples = []
        for r in rows:
            ids, types = encode_classification(tokenizer, arch, r["text"], r.get("text_pair"), max_len)
            examples.append(Example(ids, index[r["label"]], types))
        return TaskDataset(task, examples, label_names)
    if task == "seq2seq":
        return TaskDataset(
            task,
            [encode_seq2seq(tokenizer, r["source"], r["target"], max_len) for r in rows],
            sources=[fit_source(tokenizer, r["source"], max_len) for r in rows],
            references=[r["target"] for r in rows],
        )
    return TaskDataset(
        task,
        [encode_completion(tokenizer, r["prompt"], r["completion"], max_len, start_id) for r in rows],
        sources=[r["prompt"] for r in rows],
        references=[r["completion"] for r in rows],
    )


def load_task(
    path: str | Path,
    task: str,
    tokenizer,
    arch: str,
    max_len: int,
    label_names: list[str] | None = None,
    start_id: int | None = None,
) -> TaskDataset:
    """Check and tokenise a task file. Pass the training ``label_names`` for a validation file."""
    rows = check_rows(path, task, label_names)
    return encode_rows(rows, task, tokenizer, arch, max_len, label_names, start_id)


# ----------------------------------------------------------------------------------------------
# Batches


def collate(examples: Sequence[Example], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, (token_type_ids), labels (-100 on padding)."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if examples[0].token_type_ids is not None:
        types = torch.zeros((len(examples), T), dtype=torch.long)
        for i, e in enumerate(examples):
            types[i, : len(e.token_type_ids)] = torch.tensor(e.token_type_ids)
        batch["token_type_ids"] = types
    if isinstance(examples[0].labels, int):
        batch["labels"] = torch.tensor([e.labels for e in examples], dtype=torch.long)
    else:
        L = max(len(e.labels) for e in examples)
        labels = torch.full((len(examples), L), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
        batch["labels"] = labels
    return batch


class ShuffledBatches:
    """Training batches: the examples in a new seeded order every epoch; resumable (the engine's
    BatchSource: ``next_batch``, ``state_dict``, ``load_state_dict``)."""

    def __init__(self, data: TaskDataset, batch_size: int, pad_id: int = 0, seed: int = 0):
        if len(data) == 0:
            raise DataError("no training examples")
        self.data, self.batch_size, self.pad_id, self.seed = data, batch_size, pad_id, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data))

    def next_batch(self) -> dict[str, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = self._order[self.position : self.position + self.batch_size - len(picked)]
            picked.extend(int(i) for i in take)
            self.position += len(take)
        return collate([self.data.examples[i] for i in picked], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def eval_batches(data: TaskDataset, batch_size: int, pad_id: int = 0):
    """The engine's ``eval_batches(max_batches)``: the split in order, sorted by length within the
    call so batches carry little padding (metrics do not depend on the order)."""
    order = sorted(range(len(data)), key=lambda i: len(data.examples[i].input_ids))

    def batches(max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        starts = range(0, len(order), batch_size)
        for n, s in enumerate(starts):
            if max_batches is not None and n >= max_batches:
                return
            yield collate([data.examples[i] for i in order[s : s + batch_size]], pad_id)

    return batches


# ----------------------------------------------------------------------------------------------
# The Shakespeare genre task

GENRES = {
    "comedies": "comedy",
    "histories": "history",
    "tragedies": "tragedy",
    "roman": "roman",
    "romances": "romance",
    "problems": "problem",
}


def split_passages(text: str, chars: int) -> list[str]:
    """Consecutive whole lines, layout kept, grouped into passages of about ``chars`` characters
    (none starts or ends with a blank line); a last piece shorter than half that is dropped."""
    out, current, n = [], [], 0
    for line in text.splitlines():
        if not current and not line.strip():
            continue
        current.append(line)
        n += len(line) + 1
        if n >= chars:
            out.append("\n".join(current).strip("\n"))
            current, n = [], 0
    if current and n >= chars // 2:
        out.append("\n".join(current).strip("\n"))
    return out


def genre_rows(
    passage_chars: int = 512, max_per_class: int = 0, val_per_play: int = 0, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows ``{"text", "label", "play"}`` of the genre task.

    Validation: the standard held-out plays (one per folder), ``val_per_play`` passages from each,
    evenly spread (all when 0). Train: the other plays; ``max_per_class`` caps each genre with a
    seeded random choice, which also balances the classes (0: all passages).
    """
    from lmforge.data.corpus import shakespeare

    train: dict[str, list[dict]] = {}
    val: list[dict] = []
    for split in ("train", "val"):
        for play in shakespeare(split):
            label = GENRES[play.label]
            body = play.text.split("\n", 1)[1]  # without the title line, which names the play
            rows = [{"text": p, "label": label, "play": play.name} for p in split_passages(body, passage_chars)]
            if split == "train":
                train.setdefault(label, []).extend(rows)
                continue
            if val_per_play and len(rows) > val_per_play:
                rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, val_per_play).round()]
            val += rows
    rng = np.random.default_rng(seed)
    train_rows = []
    for label in sorted(train):
        rows = train[label]
        if max_per_class and len(rows) > max_per_class:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), max_per_class, replace=False))]
        train_rows += rows
    return train_rows, val


# ----------------------------------------------------------------------------------------------
# The Shakespeare restoration task: put back case and punctuation

# A character that is neither a letter, a digit nor whitespace, except an apostrophe inside a word.
_PUNCTUATION = re.compile(r"(?!(?<=[^\W\d_])'(?=[^\W\d_]))[^\w\s]|_")


def restoration_source(text: str) -> str:
    """The source side of the restoration task, derived from the original ``text`` by three rules:
    (1) lower case; (2) every character that is not a letter, a digit or whitespace becomes a space,
    except an apostrophe between two letters ("i'll", "o'er" stay; "'tis" becomes "tis"); (3) on each
    line, words are separated by single spaces, with none at either end; line breaks stay and lines
    left empty are dropped. The words of the source are the target's words in order, so a model
    only has to restore case, punctuation and spacing."""
    lines = (" ".join(_PUNCTUATION.sub(" ", line.lower()).split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _speeches(text: str) -> Iterator[list[str]]:
    """The spoken lines of each speech: blocks of lines after a ``NAME:`` line, up to a blank line."""
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if len(lines) > 1 and lines[0].endswith(":") and not lines[0].endswith("::"):
            yield [line for line in lines[1:] if line.strip()]


def restoration_rows(passage_chars: int = 120, val_per_play: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows ``{"source", "target", "play"}`` of the restoration task.

    A target is up to ``passage_chars`` characters of consecutive whole lines of one speech (a line
    longer than that is a passage alone); the source is :func:`restoration_source` of it. Passages
    whose source is empty (punctuation only) are left out. Train: the 32 training plays;
    validation: the standard held-out plays, ``val_per_play`` passages each, evenly spread (all when 0).
    Short common lines occur in several plays ("Ay, my lord."): a training passage whose source is
    also a validation source is left out, so no passage is on both sides.
    """
    from lmforge.data.corpus import shakespeare

    out: dict[str, list[dict]] = {"val": [], "train": []}
    for split in out:
        for play in shakespeare(split):
            rows = []
            for lines in _speeches(play.text):
                current: list[str] = []
                for line in lines + [None]:
                    if current and (line is None or len("\n".join(current + [line])) > passage_chars):
                        target = "\n".join(current)
                        source = restoration_source(target)
                        if source:
                            rows.append({"source": source, "target": target, "play": play.name})
                        current = []
                    if line is not None:
                        current.append(line)
            if split == "val" and val_per_play and len(rows) > val_per_play:
                rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, val_per_play).round()]
            out[split] += rows
    held_out = {r["source"] for r in out["val"]}
    return [r for r in out["train"] if r["source"] not in held_out], out["val"]


def restoration_prompt(source: str) -> str:
    """The restoration task as a decoder prompt: the source, then a line that asks for the text."""
    return f"{source}\nRESTORED:\n"
