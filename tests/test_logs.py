import json
import logging
import subprocess
import sys

import tqdm.std

from maskface.logs import logging_to_stderr


def test_log_lines_go_through_tqdm_to_stderr_at_the_level_asked(monkeypatch, capsys):
    # Through tqdm.write, not straight to the stream: that is what keeps a live bar intact.
    written = []
    monkeypatch.setattr(tqdm.std.tqdm, "write", classmethod(lambda cls, text, file=None: written.append((text, file))))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logger = logging.getLogger("maskface.test_logs")
    with logging_to_stderr(logging.INFO, "%(levelname)s %(name)s: %(message)s"):
        logger.info("crop %d of %d", 1, 2)
        logger.debug("not asked for")
    logger.warning("after the block")
    assert written == [("INFO maskface.test_logs: crop 1 of 2", sys.stderr)]
    assert root.handlers == handlers and root.level == level


def test_a_progress_bar_and_log_lines_share_stderr_cleanly(capsys):
    bar = tqdm.std.tqdm(total=3, file=sys.stderr, ascii=True, mininterval=0)
    with logging_to_stderr(logging.INFO, "%(message)s"):
        bar.update(1)
        logging.getLogger("maskface.test_logs").info("between updates")
        bar.update(1)
    bar.close()
    # tqdm.write clears the bar, prints the line, redraws the bar: the line stands alone.
    assert "\nbetween updates\n" in capsys.readouterr().err.replace("\r", "\n")


def test_importing_the_package_configures_no_handlers():
    # In a fresh interpreter: in this one, pytest and other tests have touched logging already.
    probe = (
        "import json, logging, maskface.cli, maskface.logs, maskface.evaluation.evaluate; "
        "print(json.dumps([len(logging.getLogger().handlers), len(logging.getLogger('maskface').handlers)]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == [0, 0]
