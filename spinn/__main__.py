"""The spinn command: ``spinn COMMAND [options]``, the same as ``python -m spinn COMMAND [options]``.

For example ``spinn configs``, ``spinn train --config small``, ``spinn evaluate --checkpoint runs/small``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import spinn

#: Each command and the module whose ``main(argv)`` runs it (also ``python -m MODULE``).
COMMANDS = {
    "train": "spinn.train",
    "evaluate": "spinn.evaluate",
    "predict": "spinn.predict",
    "download": "spinn.data.download",
    "configs": "spinn.shipped",
    "listops": "spinn.data.listops",
}


def summary(module: str) -> str:
    """The first clause of a command's description, for the list of commands."""
    description = importlib.import_module(module).build_parser().description or ""
    return description.split(";")[0].rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<10}{summary(module)}" for name, module in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="spinn",
        description="SPINN (Bowman et al. 2016): train, evaluate and run shift-reduce sentence encoders.",
        epilog=f"commands:\n{commands}\n\n'spinn COMMAND --help' shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spinn {spinn.__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command's own usage and errors then read "spinn train ...", as typed
        sys.argv[0] = f"spinn {args.command}"
    return importlib.import_module(COMMANDS[args.command]).main(args.args)


if __name__ == "__main__":
    sys.exit(main())
