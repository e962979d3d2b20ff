"""Entry point of the ``lmforge`` command.

Each verb lives in its own module of this package and exposes::

    COMMAND = "name"            # the subcommand
    HELP = "one line"           # shown by ``lmforge --help``
    def add_arguments(parser)   # argparse arguments
    def run(args) -> int | None # does the work (library calls + printing)

Modules are discovered, so adding a verb touches nothing else. User errors
(:class:`~lmforge.errors.LMForgeError`) print ``error: ...`` and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

import lmforge
from lmforge.errors import LMForgeError


def _verb_modules():
    import lmforge.cli as pkg

    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"lmforge.cli.{info.name}")
        if hasattr(mod, "COMMAND"):
            mods.append(mod)
    return mods


class _Parser(argparse.ArgumentParser):
    """argparse with lmforge's error convention, and negative numbers such as ``-1e21`` or ``-inf``
    taken as values (argparse knows only ``-1`` and ``-.5``), so the library can say what is wrong."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str):
        """One line, ``error: ...`` and exit 2, as for every other user error (no usage block)."""
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmforge", description=lmforge.__doc__.strip().splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lmforge {lmforge.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _verb_modules():
        p = sub.add_parser(mod.COMMAND, help=mod.HELP, description=mod.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args._extra = extra
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        rc = args._run(args)
    except LMForgeError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
