"""Byte-level BPE tokenizer (HF `tokenizers`) with dcoder's special tokens at ids 0..5."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from data_prep.format import SPECIAL_TOKENS

# Pre-tokenization split (the Qwen2 / cl100k-style pattern): a line break ends its piece, so
# "):\n    return" splits as "):\n" | "   " | " return". GPT-2's pattern instead glues the break to
# the next line's indentation ("\n   "), so a prompt that ends at a line break (an editor cursor at
# the start of a line, every single-line infill) ends on a token the model rarely saw there.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_bpe(texts: Iterable[str] | Iterator[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`. Deterministic for the same texts in the same order.

    Byte-level means any UTF-8 text round-trips (`decode(encode(s)) == s`); whitespace runs are
    kept as they are, which matters for code. No token spans a line break and the text after it
    (see SPLIT_PATTERN).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Map each special token to its id; raise ValueError if the tokenizer lacks one."""
    ids = {}
    for t in SPECIAL_TOKENS:
        i = tok.token_to_id(t)
        if i is None:
            raise ValueError(f"tokenizer lacks the special token {t}")
        ids[t] = i
    return ids
