"""What every stage script shares: logging set-up and clean failure on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tqdm.auto import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Log lines through tqdm.write so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never take the stage down
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; user errors (bad params, bad data) exit 2 with one line, no traceback."""
    from maskface.config import ConfigError

    setup_logging()
    try:
        main(argv)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        logging.getLogger("maskface").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
