"""Small-scale proxies that separate tiny models (CPU experiments, per-epoch tracking).

1. Next-line multiple choice (as HellaSwag is scored in the paper): from held-out validation
   documents, the context before a line, the true line and 3 distractor lines of similar token
   length from other documents; the option with the highest log-likelihood wins. AR: the exact
   sum of next-token log-probs. DLM: a Monte-Carlo ELBO with K fixed-seed samples, the same
   random draws for every option of a question (so options are compared on equal noise).
2. Held-out line completion: greedy generation (through `serving.engine`) after the same
   contexts; exact match of the first generated line (whitespace-stripped).

Accuracies come with their standard error (`_stderr`) and a 95 % Wilson interval (`_lo`, `_hi`).
The context ends with the line break before the line and the options are bare lines: the
tokenizer never merges a line break with what follows it (data_prep/tokenizer.py), so context
and option tokenize as they do inside the training text.

Not handled: documents with fewer than two usable lines; contexts are cut to the model's
`max_seq_len` from the left (tiny models see ~100 tokens of context).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MIN_LINE_CHARS = 8  # shorter lines (`else:`, `)`) carry too little signal


@dataclass
class Question:
    context: str  # text up to and including the line break before the true line
    options: list[str]  # the true line and 3 distractors (without line breaks)
    answer: int  # index of the true line in options


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_stderr(correct: int, total: int) -> float:
    """Standard error of an accuracy (what dcoder's crossover report combines across runs)."""
    if total == 0:
        return 0.0
    p = correct / total
    return math.sqrt(p * (1 - p) / total)


def validation_texts(data_dir: str, tokenizer, max_docs: int = 5000) -> list[str]:
    """Decoded documents of the data dir's val split (EOS dropped)."""
    from data_prep.format import DataDirError, IndexedDataset, read_manifest, shard_prefixes

    read_manifest(data_dir)
    texts = []
    for prefix in shard_prefixes(data_dir, "val"):
        ds = IndexedDataset.open(prefix)
        for i in range(len(ds)):
            texts.append(tokenizer.decode(ds[i].tolist()))
            if len(texts) >= max_docs:
                return texts
    if not texts:
        raise DataDirError(f"{data_dir} has no validation documents for the proxies")
    return texts


def build_questions(texts: list[str], tokenizer, n: int, seed: int = 0) -> list[Question]:
    """Up to `n` questions, deterministic for (texts, n, seed); at most a few per document."""
    rng = random.Random(seed)
    candidates = []  # (doc index, char offset of the "\n" before the line, line)
    for d, text in enumerate(texts):
        lines = text.split("\n")
        offset = len(lines[0])
        seen = set()
        for line in lines[1:]:
            if len(line.strip()) >= MIN_LINE_CHARS and line.strip() not in seen:
                candidates.append((d, offset, line))
                seen.add(line.strip())
            offset += 1 + len(line)
    if len(candidates) < 4:
        return []
    lengths = [len(tokenizer.encode(c[2]).ids) for c in candidates]
    by_len = sorted(range(len(candidates)), key=lambda i: lengths[i])
    rank = {i: r for r, i in enumerate(by_len)}
    order = list(range(len(candidates)))
    rng.shuffle(order)
    questions = []
    for i in order:
        if len(questions) >= n:
            break
        d, offset, line = candidates[i]
        # Distractors: the nearest lines in token length from other documents, text distinct.
        r, picked, seen = rank[i], [], {line.strip()}
        for step in range(1, len(by_len)):
            for j in (r - step, r + step):
                if 0 <= j < len(by_len) and len(picked) < 3:
                    c = candidates[by_len[j]]
                    if c[0] != d and c[2].strip() not in seen:
                        picked.append(c[2])
                        seen.add(c[2].strip())
            if len(picked) == 3 or step > 200:
                break
        if len(picked) < 3:
            continue
        options = [line, *picked]
        perm = list(range(4))
        rng.shuffle(perm)
        questions.append(Question(texts[d][: offset + 1], [options[p] for p in perm], perm.index(0)))
    return questions


def _encode(tokenizer, q: Question, eos_id: int, max_len: int, context_tokens: int | None):
    """(context ids, option ids): one context for all options, cut from the left to fit."""
    opts = [tokenizer.encode(o).ids[: max_len - 2] for o in q.options]
    room = max_len - max(len(o) for o in opts)
    if context_tokens:
        room = min(room, context_tokens)
    # Documents follow <|endoftext|> in the packed training data (and in the engine's prompts).
    ctx = [eos_id, *tokenizer.encode(q.context).ids][-room:]
    return ctx, opts


def _ar_scores(model, ctx: list[int], opts: list[list[int]], pad_id: int, device) -> list[float]:
    """Exact sum of next-token log-probs of each option: the context once (KV cache), then the
    options as one batch on top of it. Shapes: ctx (1, C), options (n_opt, max L - 1)."""
    import torch

    logits, past = model(torch.tensor([ctx], device=device), use_cache=True)  # (1, C, V)
    first = logits[0, -1].log_softmax(-1)  # predicts every option's first token
    scores = [first[o[0]].item() for o in opts]
    T = max(len(o) for o in opts) - 1
    if T == 0:
        return scores
    ids = torch.full((len(opts), T), pad_id, dtype=torch.long)
    for i, o in enumerate(opts):
        ids[i, : len(o) - 1] = torch.tensor(o[:-1])
    past = [(k.expand(len(opts), -1, -1, -1), v.expand(len(opts), -1, -1, -1)) for k, v in past]
    # Right padding is harmless: causal attention never lets a real token see a later pad.
    logp = model(ids.to(device), past_kv=past).log_softmax(-1)  # (n_opt, T, V)
    for i, o in enumerate(opts):
        scores[i] += logp[i, torch.arange(len(o) - 1), torch.tensor(o[1:])].sum().item()
    return scores


def _dlm_rows(qi: int, ctx: list[int], opts: list[list[int]], mask_id: int, mc_samples: int, seed: int):
    """Rows (question, option, input ids, target ids, scored positions, weight) of the MC ELBO."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + qi)
    # Same draws for all options: a masking fraction per sample and one priority per position.
    fracs = torch.rand(mc_samples, generator=gen)
    prio = torch.rand(mc_samples, max(len(o) for o in opts), generator=gen)
    rows = []
    for oi, opt in enumerate(opts):
        L = len(opt)
        for k in range(mc_samples):
            # LLaDA's estimator of the masked-diffusion ELBO: mask l ~ U{1..L} tokens, weight L/l.
            n_mask = max(1, math.ceil(float(fracs[k]) * L))
            masked = sorted(prio[k, :L].argsort()[:n_mask].tolist())
            hidden = set(masked)
            ids = ctx + [mask_id if j in hidden else t for j, t in enumerate(opt)]
            rows.append((qi, oi, ids, [opt[j] for j in masked], [len(ctx) + j for j in masked],
                         L / n_mask / mc_samples))
    return rows


def option_scores(model, tokenizer, questions: list[Question], *, objective: str, mc_samples: int = 4,
                  seed: int = 0, batch_size: int = 32, context_tokens: int | None = None) -> list[list[float]]:
    """Per question, the (AR exact / DLM ELBO) log-likelihood of each option given the context.

    `context_tokens` caps the context (default: as much as the model's max_seq_len allows); the
    DLM cannot reuse a context across options, so this is its main cost knob.
    """
    import torch

    from data_prep.format import EOS, MASK, PAD

    mask_id, pad_id, eos_id = tokenizer.token_to_id(MASK), tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
    max_len = model.config.max_seq_len
    device = next(model.parameters()).device
    encoded = [_encode(tokenizer, q, eos_id, max_len, context_tokens) for q in questions]
    scores = [[0.0] * len(q.options) for q in questions]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if objective == "ar":
                return [_ar_scores(model, ctx, opts, pad_id, device) for ctx, opts in encoded]
            rows = [r for qi, (ctx, opts) in enumerate(encoded) for r in _dlm_rows(qi, ctx, opts, mask_id,
                                                                                   mc_samples, seed)]
            for b in range(0, len(rows), batch_size):
                chunk = rows[b : b + batch_size]
                T = max(len(r[2]) for r in chunk)
                ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
                keep = torch.zeros(len(chunk), T, dtype=torch.bool)
                for i, r in enumerate(chunk):
                    ids[i, : len(r[2])] = torch.tensor(r[2])
                    keep[i, : len(r[2])] = True
                # Bidirectional attention: padding must not be attended. Mask (B, 1, T, T).
                attn = keep[:, None, None, :].expand(-1, 1, T, T).to(device)
                # the LM head only at the scored positions (a few per row): (B, K) padded by repeats
                K = max(len(r[4]) for r in chunk)
                at = torch.tensor([r[4] + [r[4][-1]] * (K - len(r[4])) for r in chunk])
                logits = model(ids.to(device), attn_mask=attn, logits_at=at.to(device))  # (B, K, V)
                rows_idx = torch.tensor([i for i, r in enumerate(chunk) for _ in r[4]], device=logits.device)
                k_idx = torch.tensor([k for r in chunk for k in range(len(r[4]))], device=logits.device)
                tgt_idx = torch.tensor([t for r in chunk for t in r[3]], device=logits.device)
                lp = logits[rows_idx, k_idx].log_softmax(-1).gather(1, tgt_idx[:, None])[:, 0].cpu()
                start = 0
                for qi, oi, _, targets, _pos, weight in chunk:
                    scores[qi][oi] += weight * lp[start : start + len(targets)].sum().item()
                    start += len(targets)
    finally:
        model.train(was_training)
    return scores


def next_line_accuracy(model, tokenizer, questions: list[Question], *, objective: str, mc_samples: int = 4,
                       seed: int = 0, context_tokens: int | None = None) -> dict[str, float]:
    """Accuracy (raw and per-character normalised) with its 95 % interval."""
    scores = option_scores(model, tokenizer, questions, objective=objective, mc_samples=mc_samples, seed=seed,
                           context_tokens=context_tokens)
    correct = sum(max(range(4), key=lambda i, s=s: s[i]) == q.answer for s, q in zip(scores, questions, strict=True))
    correct_norm = sum(max(range(4), key=lambda i, s=s, q=q: s[i] / len(q.options[i])) == q.answer
                       for s, q in zip(scores, questions, strict=True))
    n = len(questions)
    lo, hi = wilson_interval(correct, n)
    return {"next_line_acc": correct / n if n else 0.0, "next_line_acc_stderr": binomial_stderr(correct, n),
            "next_line_acc_lo": lo, "next_line_acc_hi": hi,
            "next_line_acc_norm": correct_norm / n if n else 0.0, "next_line_n": float(n)}


def line_completion_exact_match(engine, questions: list[Question], *, max_extra_tokens: int = 8) -> dict[str, float]:
    """Greedy completion of the true line after each context; exact match of the first line."""
    from serving.engine.types import GenerationRequest

    reqs, targets = [], []
    for q in questions:
        line = q.options[q.answer]
        n_tok = engine.count_tokens(line + "\n")
        # The prompt is cut from the left so prompt + completion fits the context.
        # (decode → re-encode can change the count, and the engine may add markers: re-check.)
        room = engine.max_context - (n_tok + max_extra_tokens) - 2
        ids = engine.tokenizer.encode(q.context).ids
        prompt = engine.tokenizer.decode(ids[-max(room, 1):])
        while room > 1 and engine.count_tokens(prompt) + 2 > engine.max_context - (n_tok + max_extra_tokens):
            room -= 4
            prompt = engine.tokenizer.decode(ids[-max(room, 1):])
        reqs.append(GenerationRequest(prompt=prompt, max_tokens=n_tok + max_extra_tokens, temperature=0.0))
        targets.append(line.strip())
    outs = engine.generate_batch(reqs)
    hits = 0
    for f, target in zip(outs, targets, strict=True):
        hits += f.text.split("\n", 1)[0].strip() == target
    n = len(questions)
    lo, hi = wilson_interval(hits, n)
    return {"line_em": hits / n if n else 0.0, "line_em_stderr": binomial_stderr(hits, n), "line_em_lo": lo,
            "line_em_hi": hi, "line_em_n": float(n)}


def run_proxies(loaded, data_dir: str, *, questions: int = 1000, line_questions: int | None = None,
                mc_samples: int = 4, seed: int = 0, cached: list[Question] | None = None,
                context_tokens: int | None = None) -> dict[str, float]:
    """Both proxies for a `coder.export.LoadedModel`; `line_questions` defaults to min(questions, 200)."""
    qs = cached if cached is not None else build_questions(
        validation_texts(data_dir, loaded.tokenizer), loaded.tokenizer, questions, seed)
    metrics = next_line_accuracy(loaded.model, loaded.tokenizer, qs, objective=loaded.objective,
                                 mc_samples=mc_samples, seed=seed, context_tokens=context_tokens)
    n_line = min(len(qs), line_questions if line_questions is not None else 200)
    if n_line:
        from serving.engine import Engine

        was_training = loaded.model.training
        engine = Engine(loaded, max_batch=16, max_queue=max(64, n_line))
        try:
            with engine:
                metrics.update(line_completion_exact_match(engine, qs[:n_line]))
        finally:
            loaded.model.train(was_training)
    return {f"proxy/{k}": v for k, v in metrics.items()}


def run_proxies_on_path(path: str, data_dir: str, *, questions: int = 1000, device: str = "cpu",
                        **kw) -> dict[str, float]:
    from coder.export import load_model

    return run_proxies(load_model(path, device=device), data_dir, questions=questions, **kw)
