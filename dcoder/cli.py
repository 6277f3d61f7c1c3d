"""`dcoder` command line.

Each stage package owns a `cli.py` with `register(subparsers)`; it adds its subcommands and sets
`func` on them. Those modules import only argparse at module level so `dcoder --help` is fast;
heavy imports (torch, datatrove, fastapi) happen inside the command functions.

A user mistake raises `UserError` (or one of the stages' subclasses of ValueError marked
user-facing); it is printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Stage CLI modules, in help order. A module is listed once its commands work (no stubs).
STAGE_CLIS = [
    "data_prep.cli",
    "coder.cli",
    "serving.cli",
    "eval.cli",
    "dcoder.workflows",
]


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcoder",
        description="Train, serve and evaluate diffusion code models on a small, fixed corpus.",
    )
    parser.add_argument("--version", action="version", version="dcoder 0.1.0")
    # coder never imports eval: the trainer's per-epoch evaluation is a callback handed to it here.
    parser.set_defaults(eval_callback_factory=eval_callback_factory)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a stage not yet present in this checkout
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def eval_callback_factory(tasks: list[str], data_dir: str, **options):
    """Build eval's per-epoch callback for the trainer (`callback(model, tokenizer, cfg, epoch, step)`)."""
    from eval.callback import make_epoch_callback

    return make_epoch_callback(tasks, data_dir, **options)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dcoder: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes are one line; everything else keeps its traceback
        if _is_user_error(e):
            print(f"dcoder {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, UserError) or getattr(e, "user_error", False)


if __name__ == "__main__":
    raise SystemExit(main())
