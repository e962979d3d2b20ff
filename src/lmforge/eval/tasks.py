"""The offline harness tasks shipped with lmforge: data from the bundled corpus's held-out plays.

Each task is an lm-eval task YAML in ``harness_tasks/`` whose ``custom_dataset`` is one of the
``*_dataset`` functions below: the rows are built from the standard validation plays
(:data:`lmforge.data.corpus.VALIDATION_PLAYS`, one per genre folder, never seen in training) when
a task is first used, the same on every machine (no download, no random state but fixed seeds).

- ``shakespeare_ppl`` (``loglikelihood_rolling``): word and byte perplexity and bits per byte of
  the six held-out plays, each scored whole.
- ``shakespeare_genre`` (multiple choice, 6): which kind of play (its folder) a passage comes from.
- ``shakespeare_cloze`` (multiple choice, 4): a line with one word replaced by each of four words
  of the same play; which reading is the real line?
- ``shakespeare_restore`` (``generate_until``, chrF and exact match): put back the case and
  punctuation of a few lines of a speech (the fine-tuning restoration task's held-out passages),
  asked as the completion fine-tuning asks a decoder (``restoration_prompt``);
  ``shakespeare_restore_seq2seq`` gives an encoder-decoder the bare source, as seq2seq fine-tuning does.

Tags: ``shakespeare`` (the four decoder tasks) and ``shakespeare_seq2seq`` (genre, cloze and the
seq2seq restoration: what an encoder-decoder answers; it has no whole-text perplexity).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

TASK_DIR = Path(__file__).parent / "harness_tasks"
TAG = "shakespeare"
SEQ2SEQ_TAG = "shakespeare_seq2seq"
SHIPPED_TASKS = (
    "shakespeare_ppl",
    "shakespeare_genre",
    "shakespeare_cloze",
    "shakespeare_restore",
    "shakespeare_restore_seq2seq",
)

# The genre task's answers, in label order; each reads after "This passage is from a".
GENRE_CHOICES = {
    "comedy": "comedy",
    "history": "history",
    "problem": "problem play",
    "roman": "Roman play",
    "romance": "romance",
    "tragedy": "tragedy",
}
GENRE_PASSAGE_CHARS = 256  # about 75 tokens of a 2k BPE: the passage and its question fit a 128-token context
GENRE_PER_PLAY = 50
CLOZE_PER_PLAY = 100
CLOZE_CHOICES = 4
CLOZE_CONTEXT_LINES = 3  # lines of the speech before the cloze line (the speaker's name among them)
CLOZE_MIN_WORDS = 6
CLOZE_WORD = re.compile(r"\b[A-Za-z]{4,}\b")  # a candidate word: four letters or more (not "the", "and", ...)
# As the restoration fine-tuning presets (shakespeare-restore, shakespeare-restore-gpt) hold them out.
RESTORE_PASSAGE_CHARS = 120
RESTORE_PER_PLAY = 32
SPEAKER = re.compile(r"^[A-Z][A-Z0-9 ,.'&-]*:$")  # "LAERTES:", "FIRST CITIZEN:"


def _interleave(rows: list[dict]) -> tuple[dict, ...]:
    """Rows of the plays taken in turn (first of each play, second of each, ...), so that the first
    N documents (the harness's ``--limit N``) mix all six genres."""
    by_play: dict[str, list[dict]] = {}
    for r in rows:
        by_play.setdefault(r["play"], []).append(r)
    turns = max(len(v) for v in by_play.values())
    return tuple(v[k] for k in range(turns) for v in by_play.values() if k < len(v))


def _held_out_plays():
    from lmforge.data.corpus import shakespeare

    return shakespeare("val")


@functools.lru_cache(maxsize=1)
def perplexity_rows() -> tuple[dict, ...]:
    """One row per held-out play: ``{"play", "genre", "text"}``, the whole play as the corpus reads it."""
    return tuple({"play": p.name, "genre": p.label, "text": p.text} for p in _held_out_plays())


@functools.lru_cache(maxsize=1)
def genre_rows(per_play: int = GENRE_PER_PLAY, passage_chars: int = GENRE_PASSAGE_CHARS) -> tuple[dict, ...]:
    """``per_play`` passages of each held-out play, evenly spread: ``{"text", "genre", "label", "play"}``
    with ``label`` the index of the genre in :data:`GENRE_CHOICES` (the fine-tuning genre task's split);
    the plays in turn."""
    from lmforge.finetune.tasks import genre_rows as finetune_genre_rows

    order = list(GENRE_CHOICES)
    _, val = finetune_genre_rows(passage_chars, val_per_play=per_play)
    return _interleave(
        [{"text": r["text"], "genre": r["label"], "label": order.index(r["label"]), "play": r["play"]} for r in val]
    )


def speech_lines(text: str) -> list[tuple[int, str]]:
    """``(index, line)`` of the spoken lines of a play: lines of a speech (after a ``NAME:`` line, up
    to the next blank line), not stage directions in brackets."""
    out, in_speech = [], False
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            in_speech = False
        elif SPEAKER.match(line):
            in_speech = True
        elif in_speech and "[" not in line:
            out.append((i, line))
    return out


@functools.lru_cache(maxsize=1)
def cloze_rows(per_play: int = CLOZE_PER_PLAY, seed: int = 0) -> tuple[dict, ...]:
    """``per_play`` cloze items of each held-out play: ``{"context", "choices", "label", "answer", "play"}``.

    Lines of at least :data:`CLOZE_MIN_WORDS` words, evenly spread over the play; one word of four
    letters or more is taken out and three other words of the same play, drawn by how often they
    occur (so the distractors are as common as the words taken out) among those with the same
    capitalisation (no lower-case name among lower-case words), are put in its place. Choice
    ``label`` is the real line. The context is the text before it, from its
    :data:`CLOZE_CONTEXT_LINES` th non-blank line back (the speaker's name among them). The plays
    in turn.
    """
    rows = []
    for k, play in enumerate(_held_out_plays()):
        rng = np.random.default_rng([seed, k])
        lines = play.text.split("\n")
        spoken = [
            (i, s) for i, s in speech_lines(play.text) if len(s.split()) >= CLOZE_MIN_WORDS and CLOZE_WORD.search(s)
        ]
        words = [w for _, s in speech_lines(play.text) for w in CLOZE_WORD.findall(s)]
        by_case = {True: [w for w in words if w[0].isupper()], False: [w for w in words if not w[0].isupper()]}
        for j in np.linspace(0, len(spoken) - 1, min(per_play, len(spoken))).round().astype(int):
            i, line = spoken[j]
            slots = list(CLOZE_WORD.finditer(line))
            slot = slots[rng.integers(len(slots))]
            answer = slot.group()
            pool = by_case[answer[0].isupper()]
            fills = [answer]
            while len(fills) < CLOZE_CHOICES:
                w = pool[rng.integers(len(pool))]
                if w.lower() not in {f.lower() for f in fills}:
                    fills.append(w)
            order = rng.permutation(CLOZE_CHOICES)
            before = [b for b in range(i) if lines[b].strip()][-CLOZE_CONTEXT_LINES:]
            context = "\n".join(lines[before[0] : i])
            rows.append(
                {
                    "context": context,
                    "choices": [line[: slot.start()] + fills[o] + line[slot.end() :] for o in order],
                    "label": int(np.flatnonzero(order == 0)[0]),
                    "answer": answer,
                    "play": play.name,
                }
            )
    return _interleave(rows)


@functools.lru_cache(maxsize=1)
def restore_rows(per_play: int = RESTORE_PER_PLAY, passage_chars: int = RESTORE_PASSAGE_CHARS) -> tuple[dict, ...]:
    """The restoration task's held-out passages (the fine-tuning presets' validation rows):
    ``{"source", "prompt", "target", "play"}``, ``prompt`` the source as a decoder is asked it; the
    plays in turn."""
    from lmforge.finetune.tasks import restoration_prompt, restoration_rows

    _, val = restoration_rows(passage_chars, per_play)
    return _interleave(
        [
            {"source": r["source"], "prompt": restoration_prompt(r["source"]), "target": r["target"], "play": r["play"]}
            for r in val
        ]
    )


def _dataset(rows):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list([dict(r) for r in rows])})


# ``custom_dataset`` hooks of the YAML files (the harness passes the task's metadata as keywords).
def perplexity_dataset(**_):
    return _dataset(perplexity_rows())


def genre_dataset(**_):
    return _dataset(genre_rows())


def cloze_dataset(**_):
    return _dataset(cloze_rows())


def restore_dataset(**_):
    return _dataset(restore_rows())
