"""``python -m poller.emulator``: the emulator without the rest of the command line."""

from __future__ import annotations

import argparse
import sys

from poller.emulator.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m poller.emulator",
        description="Emulator of the Glance Activity Service, with an admin API.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
