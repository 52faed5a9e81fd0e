"""What every stage script shares: logging set-up and clean failure on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from maskface.logs import TqdmLogHandler


def setup_logging(level: int = logging.INFO) -> None:
    handler = TqdmLogHandler()
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
