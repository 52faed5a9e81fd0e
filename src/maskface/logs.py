"""Logging set-up for the project's scripts (the stage scripts and the ``maskface`` command).

Library modules only log through ``logging.getLogger(__name__)``; scripts wrap their work in
:func:`logging_to_stderr`. Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Optional

from tqdm.contrib.logging import logging_redirect_tqdm


@contextlib.contextmanager
def logging_to_stderr(level: int, fmt: str, datefmt: Optional[str] = None) -> Iterator[None]:
    """Within the block, records of ``level`` and above go to stderr as ``fmt`` lines.

    They are written through ``tqdm.write`` (:func:`tqdm.contrib.logging.logging_redirect_tqdm`),
    so a progress bar on stderr stays intact. The root logger's handlers and level are as
    before afterwards.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    # logging_redirect_tqdm carries a handler's formatter and filters over, not its level.
    handler.addFilter(lambda record: record.levelno >= level)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    # Lower the root's level for this run, never raise it: a handler someone else attached
    # (a test's log capture) keeps the records it already got.
    root.setLevel(min(previous, level) if previous != logging.NOTSET else level)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
