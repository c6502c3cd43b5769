"""The one place where exceptions become exit statuses.

0 success; 2 bad input (one line on stderr, no traceback); 1 internal error (one line, the
traceback with ``--debug``); 130 interrupted (the run directory's caches let a rerun resume).
"""

from __future__ import annotations

import sys
import warnings

import click

from hawq_search.exceptions import UserInputError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def run_cli(group: click.Group, args: list[str] | None = None) -> int:
    """Run ``group`` and translate every outcome into an exit status."""
    warnings.showwarning = _show_warning
    debug = "--debug" in (args if args is not None else sys.argv[1:])
    try:
        group.main(args=args, standalone_mode=False, prog_name="hawq-search")
        return EXIT_OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        print(f"error: {_one_line(exc.format_message())} (see hawq-search --help)", file=sys.stderr)
        return EXIT_USAGE
    except (UserInputError, click.BadParameter) as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
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
