import os

from maskface.text import one_line, printable


def test_one_line_folds_every_run_of_white_space():
    error = ValueError("params: crop.mode = 'x'\n  is invalid;\tvalid: none, ratio\n")
    assert one_line(error) == "params: crop.mode = 'x' is invalid; valid: none, ratio"
    assert one_line("already one line") == "already one line"


def test_printable_shows_undecodable_file_name_bytes_as_replacement_characters():
    raw = b"bob/caf\xe9 \xff.jpg"  # Latin-1 bytes, as RMFRD's folder names have them
    held = os.fsdecode(raw)  # how the tables hold such a name: surrogate escapes
    shown = printable(held)
    assert shown == raw.decode("utf-8", "replace") == "bob/caf\ufffd \ufffd.jpg"
    shown.encode("utf-8")  # printable on any UTF-8 terminal; `held` itself is not
    assert printable("Émilie/ok.jpg") == "Émilie/ok.jpg"
