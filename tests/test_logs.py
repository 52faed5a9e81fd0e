import logging

from tqdm.auto import tqdm

from maskface.logs import TqdmLogHandler


def test_log_lines_go_to_stderr_between_progress_bars(capsys):
    logger = logging.getLogger("maskface.test_logs")
    handler = TqdmLogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with tqdm(total=2, file=None) as bar:
            logger.info("crop %d of %d", 1, 2)
            bar.update(2)
    finally:
        logger.removeHandler(handler)
    captured = capsys.readouterr()
    assert "INFO maskface.test_logs: crop 1 of 2\n" in captured.err
    assert captured.out == ""


def test_importing_the_package_configures_no_handlers():
    import maskface.cli  # noqa: F401
    import maskface.logs  # noqa: F401

    assert not any(isinstance(h, TqdmLogHandler) for h in logging.getLogger().handlers)
    assert not logging.getLogger("maskface").handlers
