import json
import logging
import subprocess
import sys

import tqdm.auto

from maskface.logs import TqdmLogHandler


def test_log_lines_are_written_through_tqdm_to_stderr(monkeypatch):
    # Through tqdm.write, not straight to the stream: that is what keeps a live bar intact.
    written = []
    monkeypatch.setattr(tqdm.auto.tqdm, "write", classmethod(lambda cls, text, file=None: written.append((text, file))))
    logger = logging.getLogger("maskface.test_logs")
    handler = TqdmLogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("crop %d of %d", 1, 2)
    finally:
        logger.removeHandler(handler)
    assert written == [("INFO maskface.test_logs: crop 1 of 2", sys.stderr)]


def test_importing_the_package_configures_no_handlers():
    # In a fresh interpreter: in this one, pytest and other tests have touched logging already.
    probe = (
        "import json, logging, maskface.cli, maskface.logs, maskface.evaluate; "
        "print(json.dumps([len(logging.getLogger().handlers), len(logging.getLogger('maskface').handlers)]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == [0, 0]
