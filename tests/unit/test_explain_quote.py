"""explain.quote is shlex.join without shlex (which imports re): the same text for every word."""
from __future__ import annotations

import shlex

import pytest
from hanok.runtime import explain

WORDS = ["", "plain", "with space", "it's", "a'b'c", "$HOME", "`id`", "semi;colon", "star*", "x\ny", "tab\t",
         "ünï", "@%+=:,./-_", "-rf", "a\\b", '"quoted"', "brace{}", "~user", "#hash", "!bang", "é", "0"]


@pytest.mark.parametrize("word", WORDS)
def test_shell_quote_matches_shlex(word: str) -> None:
    assert explain.shell_quote(word) == shlex.quote(word)


def test_quote_matches_shlex_join() -> None:
    assert explain.quote(WORDS) == shlex.join(WORDS)
    assert explain.quote(["sh", "-c", 5]) == "sh -c 5"  # type: ignore[list-item]  # non-strings are str()ed
