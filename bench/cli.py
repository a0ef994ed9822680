"""What the benchmark scripts' command lines share."""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's argument parser: ``--help`` prints its docstring ``doc`` as written (its commands
    and tables keep their lines)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
