"""A log handler for the project's scripts (the stage scripts and the ``maskface`` command).

Library modules only log through ``logging.getLogger(__name__)``; scripts attach this
handler. Nothing here runs at import.
"""

from __future__ import annotations

import logging
import sys


class TqdmLogHandler(logging.StreamHandler):
    """Writes log lines through ``tqdm.write`` so progress bars on stderr stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never take the script down
            self.handleError(record)
