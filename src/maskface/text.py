"""The small helpers that format text for people: error lines and file names on a screen.

Every message the stages and the ``maskface`` command print goes through these, so a
message is one line wherever it is shown and a file name that is not valid UTF-8 never
crashes the print. Imports nothing beyond the standard library: the CLI parser uses it.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` (or an exception's message) with every run of white space, newlines too, as one space."""
    return " ".join(str(text).split())


def printable(text: object) -> str:
    """``text`` for display (terminal, plots, reports): undecodable file-name bytes become U+FFFD.

    File names that are not valid UTF-8 are ``str`` with surrogate escapes (what
    ``os.fsdecode`` returns); printing one as it is raises UnicodeEncodeError. Only for
    showing a name; tables keep the exact bytes (:mod:`maskface.tables`).
    """
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
