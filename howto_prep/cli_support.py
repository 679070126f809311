"""Shared CLI plumbing: lazy subcommand dispatch and one-line error reporting."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from howto_prep.errors import ExitCode, ToolError

LABELS = {ExitCode.SYSTEM_FAULT: "system fault", ExitCode.DIVERGED: "diverged", ExitCode.INTERRUPTED: "stopped"}


def run_handler(prog: str, args: argparse.Namespace) -> int:
    """Import `args.handler` ("module:function") only when needed and run it.

    Heavy imports (torch, ray) happen inside the handler, so `--help` stays fast.
    """
    module_name, func_name = args.handler.split(":")
    try:
        handler: Callable[[argparse.Namespace], int | None] = getattr(
            importlib.import_module(module_name), func_name
        )
        return int(handler(args) or 0)
    except ToolError as err:  # every failure of ours: one line and its own exit code
        label = LABELS.get(err.exit_code, "error")
        print(f"{prog}: {label}: {err}", file=sys.stderr)
        return int(err.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


def main_for(prog: str, build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_handler(prog, args)
