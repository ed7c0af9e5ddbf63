"""The configs shipped inside the package: list them, print one, or copy one out to edit.

    spinn configs                      # each name and the first line of its header
    spinn configs small                # print small.yaml
    spinn configs small --copy         # write ./small.yaml (never over an existing file)

Any command that takes ``--config`` takes a shipped config's name as well as a path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spinn import cli
from spinn.config import shipped_config, shipped_configs
from spinn.errors import SpinnError


def describe(path: Path) -> str:
    """The first line of a config's header comment, without its ``#``."""
    return path.read_text(encoding="utf-8").partition("\n")[0].removeprefix("#").strip()


def copy_config(name: str, dest: str | Path = ".") -> Path:
    """Copy the shipped config `name` to `dest`: a file, or a folder that gets NAME.yaml.

    Returns:
        The file written.

    Raises:
        SpinnError: an unknown name, a file already at the destination (it is left as it was), or a
            destination folder that does not exist.
    """
    source = shipped_config(name)
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    try:
        with open(target, "xb") as f:  # "x": an existing file is never overwritten
            f.write(source.read_bytes())
    except FileExistsError:
        raise SpinnError(f"{target}: already exists; copy to another file with --copy OTHER.yaml") from None
    except FileNotFoundError:
        raise SpinnError(f"{target}: no such folder {target.parent}") from None
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="List the configs shipped with spinn, print one, or copy one out to edit.",
        epilog="example: spinn configs small --copy my_small.yaml; then spinn train --config my_small.yaml",
    )
    parser.add_argument("name", nargs="?", help="a shipped config to print (or copy, with --copy)")
    parser.add_argument(
        "--copy",
        nargs="?",
        const=".",
        metavar="DEST",
        help="copy NAME to the file or folder DEST (default: ./NAME.yaml) instead of printing it; "
        "an existing file is never overwritten",
    )
    return parser


def run_configs(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.copy is not None:
            raise SpinnError("--copy: name the config to copy, e.g. spinn configs small --copy")
        shipped = shipped_configs()
        width = max(map(len, shipped))
        for name, path in shipped.items():
            print(f"{name:<{width}}  {describe(path)}")
        return 0
    if args.copy is None:
        print(shipped_config(args.name).read_text(encoding="utf-8"), end="")
        return 0
    target = copy_config(args.name, args.copy)
    print(f"{target}: copied; run it with --config {target}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_configs, argv)


if __name__ == "__main__":
    sys.exit(main())
