"""`dcoder train`, `dcoder pair`, `dcoder export` (module level: argparse only)."""

from __future__ import annotations

import argparse


def _add_train_args(p: argparse.ArgumentParser, objective: bool) -> None:
    p.add_argument("--data", required=True, help="data dir written by `dcoder prep`")
    p.add_argument("--preset", default="tiny", help="tiny | small | paper-1.7b")
    p.add_argument("--out", required=True, help="run dir (created; --resume continues it)")
    if objective:
        p.add_argument("--objective", choices=["dlm", "ar"], default="dlm")
    p.add_argument("--epochs", type=float, default=None, help="budget in passes over the unique tokens")
    p.add_argument("--total-tokens", type=int, default=None, help="budget in tokens (wins over --epochs)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (schedule unchanged)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: per epoch)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. model.n_layers=2 or lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--eval-tasks", default="", help="comma-separated eval tasks run after every epoch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no console progress")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model (dlm or ar); works under torchrun")
    _add_train_args(p, objective=True)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("pair", help="train the matched AR + DLM pair (OUT/ar, OUT/dlm)")
    _add_train_args(p, objective=False)
    p.set_defaults(func=cmd_pair)
    p = sub.add_parser("export", help="export a run dir's latest checkpoint as a HF model dir")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="model dir to write")
    p.set_defaults(func=cmd_export)


def _config(args: argparse.Namespace, objective: str | None):
    from coder.config import apply_overrides, get_preset

    cfg = get_preset(args.preset)
    sets = list(args.set)
    if objective:
        sets.append(f"train.objective={objective}")
    for flag, key in (("epochs", "epochs"), ("total_tokens", "total_tokens"), ("max_steps", "max_steps"),
                      ("save_every", "save_every")):
        if getattr(args, flag) is not None:
            sets.append(f"train.{key}={getattr(args, flag)}")
    return apply_overrides(cfg, sets)


def _callback(args: argparse.Namespace):
    tasks = [t for t in args.eval_tasks.split(",") if t.strip()]
    factory = getattr(args, "eval_callback_factory", None)
    if not tasks:
        return None
    if factory is None:
        from coder.config import ConfigError

        raise ConfigError("--eval-tasks needs the eval stage (run through the `dcoder` CLI)")
    return factory(tasks, args.data)


def cmd_train(args: argparse.Namespace) -> int:
    from coder import distributed
    from coder.train import train

    try:
        train(_config(args, args.objective), args.data, args.out, resume=args.resume,
              eval_callback=_callback(args), device=args.device, quiet=args.quiet)
    finally:
        distributed.cleanup()
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    from coder import distributed
    from coder.train import train_pair

    try:
        train_pair(_config(args, None), args.data, args.out, resume=args.resume,
                   eval_callback=_callback(args), device=args.device, quiet=args.quiet)
    finally:
        distributed.cleanup()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from coder.export import export_run

    out = export_run(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
