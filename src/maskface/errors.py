"""The one line between "the user must change something" and "maskface has a bug".

Every failure a user can fix (a params value, a dataset, a model folder, an image, an
option, missing weights) is a :class:`UserError`: the stages and the ``maskface`` command
print its one-line message and exit 2. Anything else is a bug and keeps its traceback;
in particular a plain ``ValueError`` is *not* a user error, so a library bug that happens
to raise one is never reported as "bad input".

The existing user-facing errors keep their historical second base (``ValueError`` or
``RuntimeError``) so callers that caught those still catch them.

The stages, the ``maskface`` command and its subcommands all turn an exception into their
one line with :func:`user_error_message`; params errors are built by :func:`invalid_param`.
"""

from __future__ import annotations

import concurrent.futures.process
from typing import Any, Optional

from maskface.text import one_line

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user gave (params, data, a file, an option) cannot be used; one-line message."""


class InputError(UserError, ValueError):
    """An invalid value from the user (an option, an argument, the data); also a ValueError."""


class ConfigError(UserError, ValueError):
    """A params value is invalid; the message names the key and the valid values."""


def invalid_param(key: str, value: Any, valid: str) -> ConfigError:
    """The error for params value ``key = value``, naming what is ``valid``."""
    return ConfigError(f"params: {key} = {value!r} is invalid; valid: {valid}")


def user_error_message(error: BaseException) -> Optional[str]:
    """The one-line message to show for a user error, or None when ``error`` is a bug.

    An ``OSError`` is the user's to fix (a missing input, a permission, a full disk) and
    its message names the file. A crashed worker process (``BrokenProcessPool``) counts as
    bad data: the workers only decode and check images, and what kills one is a file that
    crashes a decoder or exhausts memory, which the user fixes by removing the file or
    lowering the workers.
    """
    if isinstance(error, UserError):
        return one_line(error)
    if isinstance(error, concurrent.futures.process.BrokenProcessPool):
        return (
            "a worker process validating images died abruptly (a file that crashes the image decoder, "
            "or out of memory); rerun with one worker (data.workers: 1, or --workers 1) to find the file, "
            f"or free memory ({one_line(error)})"
        )
    if isinstance(error, OSError):
        return one_line(error)
    return None
