"""The one error convention of every entry point.

Errors a user can fix (a bad config value, a missing artifact, a malformed data row) subclass
`UserFacingError` besides their usual base (ValueError, FileNotFoundError, ...); their message
already names the bad value and the fix. `run_cli` prints those as `error: ...` and exits 2
without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional


class UserFacingError(Exception):
    """Mixin for errors whose message tells the user what to fix."""


def run_cli(body: Callable[[], Optional[int]]) -> int:
    """Run a command's body: 0 (or its own code) on success, 2 on a user-facing error, 130 on Ctrl-C."""
    try:
        return body() or 0
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
