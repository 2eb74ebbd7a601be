"""What the model-check commands (``python -m medcf.measure.*``) share: their parser's common arguments, and their
ending: the result printed as JSON, or one error line and status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def command_parser(module: str, doc: str, model_help: str) -> argparse.ArgumentParser:
    """The parser of a model-check command, with the arguments every one of them takes: ``--model`` (required)
    and ``--device``.

    Args:
        module: the command's module (``medcf.measure.reconstruction``); the program is ``python -m module``.
        doc: the module's docstring; its first paragraph describes the command.
        model_help: the help text of ``--model``.

    Returns:
        The parser, ready for the command's own arguments.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return parser


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
