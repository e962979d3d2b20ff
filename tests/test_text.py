"""The ground-floor text module: byte counts (reading files is tested through the corpus)."""

from lmforge.text import utf8_len


def test_utf8_len():
    assert utf8_len("aé😀") == 1 + 2 + 4
