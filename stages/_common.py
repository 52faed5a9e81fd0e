"""What every stage script shares: logging set-up and clean failure on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from maskface.errors import EXIT_USER_ERROR, user_error_message
from maskface.logs import logging_to_stderr


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main: a user error prints ``<stage>: error: <one line>`` and exits 2.

    Anything else is a bug and propagates with its full traceback (exit 1): a plain
    ValueError from library code is not assumed to be the user's fault.
    """
    with logging_to_stderr(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"):
        try:
            main(argv)
        except Exception as error:
            message = user_error_message(error)
            if message is None:
                raise
            stage = Path(main.__code__.co_filename).stem
            print(f"{stage}: error: {message}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
