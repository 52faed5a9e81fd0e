import concurrent.futures.process
import errno

from maskface.errors import ConfigError, InputError, invalid_param, user_error_message


def test_user_errors_and_file_system_refusals_get_one_line_bugs_none():
    assert user_error_message(InputError("--top-k 0 is invalid;\nvalid: an integer >= 1")) == (
        "--top-k 0 is invalid; valid: an integer >= 1"
    )
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "data/manifest.csv")
    assert user_error_message(missing) == "[Errno 2] No such file or directory: 'data/manifest.csv'"
    crashed = user_error_message(concurrent.futures.process.BrokenProcessPool("a child process terminated"))
    assert "one worker" in crashed and "a child process terminated" in crashed
    # A plain ValueError from library code is a bug: it keeps its traceback.
    assert user_error_message(ValueError("bug")) is None
    assert user_error_message(KeyError("bug")) is None


def test_invalid_param_names_the_key_the_value_and_the_valid_choices():
    error = invalid_param("crop.keep_ratio", 1.5, "a number in (0, 1]")
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert str(error) == "params: crop.keep_ratio = 1.5 is invalid; valid: a number in (0, 1]"
