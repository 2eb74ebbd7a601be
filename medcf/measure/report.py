"""The evaluation commands' shared ending: print the result as JSON, or one error line and status 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def report(prog: str, compute: Callable[[], dict[str, Any]]) -> int:
    """Run ``compute``; print its result as JSON (status 0), or a bad input's error on stderr (status 2).

    Args:
        prog: the command's name, which starts the error line.
        compute: the evaluation; a ValueError or OSError it raises is a bad input.

    Returns:
        The exit status: 0, or 2 on a bad input.
    """
    try:
        result = compute()
    except (ValueError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
