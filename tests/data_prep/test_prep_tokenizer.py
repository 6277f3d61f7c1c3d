import random

from data_prep.tokenizer import train_bpe

CODE = '''import os


def walk(top, depth=0):
    """Yield (path, depth) for every file under top."""
    for name in sorted(os.listdir(top)):
        path = os.path.join(top, name)
        if os.path.isdir(path):
            yield from walk(path, depth + 1)
        else:
            yield path, depth


class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k=1):
        self.n += k
        return self.n
'''


def test_a_prompt_ending_at_a_line_break_tokenizes_as_a_prefix_of_the_whole_text():
    # An editor cursor at the start of a line (every single-line infill) must end the prompt on
    # the same token boundary the model saw in training; merges across "\n" + indent break that.
    tok = train_bpe([CODE] * 20, vocab_size=400)
    full = tok.encode(CODE).ids
    lines = CODE.splitlines(keepends=True)
    for i in range(1, len(lines)):
        if not lines[i].strip():  # "\n\n" is one piece: a prompt can't end inside it and match
            continue
        prompt = "".join(lines[:i])
        ids = tok.encode(prompt).ids
        assert full[: len(ids)] == ids, repr(lines[i - 1])


def test_any_text_round_trips():
    tok = train_bpe([CODE] * 5, vocab_size=300)
    rng = random.Random(0)
    for _ in range(50):
        s = "".join(rng.choice(["\n", "\r\n", "\t", "  ", "é", "😀", "x", "'s", "1", "(", ":"]) for _ in range(30))
        assert tok.decode(tok.encode(s).ids) == s
