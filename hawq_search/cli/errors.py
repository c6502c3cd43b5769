"""The one place where exceptions become exit statuses.

0 success; 2 bad input (one line on stderr, no traceback); 1 internal error (one line, the
traceback with ``--debug``); 130 interrupted (the run directory's caches let a rerun resume).
"""

from __future__ import annotations

import re
import sys
import warnings

import click

from hawq_search.core.exceptions import InputWarning, UserInputError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def cli_flags(group: click.Group) -> dict[str, str]:
    """Library argument name -> the flag that sets it, over every command of ``group``."""
    from hawq_search.cli.options import CONFIG_NAMES

    flags: dict[str, str] = {}
    stack: list[click.Command] = [group]
    while stack:
        cmd = stack.pop()
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name and p.opts:
                flags.setdefault(p.name, max(p.opts, key=len))
        if isinstance(cmd, click.Group):
            stack.extend(cmd.commands.values())
    for attr, name in CONFIG_NAMES.items():
        if name in flags:
            flags[attr] = flags[name]
    return flags


def in_cli_terms(exc: UserInputError | InputWarning, flags: dict[str, str]) -> str:
    """The message with the argument names it uses (``exc.params``) shown as flags."""
    text = str(exc)
    for param in exc.params:
        if param in flags:
            text = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w])", flags[param], text)
    return text


def _warning_printer(flags: dict[str, str]):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if isinstance(message, (UserInputError, InputWarning)):
            message = in_cli_terms(message, flags)
        print(f"warning: {_one_line(message)}", file=sys.stderr)

    return show


def run_cli(group: click.Group, args: list[str] | None = None) -> int:
    """Run ``group`` and translate every outcome into an exit status."""
    flags = cli_flags(group)
    warnings.showwarning = _warning_printer(flags)
    import logging

    logging.getLogger("optuna").setLevel(logging.WARNING)  # trials show in our progress bar
    debug = "--debug" in (args if args is not None else sys.argv[1:])
    try:
        group.main(args=args, standalone_mode=False, prog_name="hawq-search")
        return EXIT_OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        print(f"error: {_one_line(exc.format_message())} (see hawq-search --help)", file=sys.stderr)
        return EXIT_USAGE
    except UserInputError as exc:
        if debug:
            raise
        print(f"error: {_one_line(in_cli_terms(exc, flags))}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, click.Abort):
        print("interrupted: rerun with the same --out to reuse what was computed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
