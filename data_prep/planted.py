"""A planted-duplicate corpus with known ground truth, for dedup tests and benchmarks.

Bases are distinct standard-library modules (60..600 lines, `encodings/` excluded because its
codecs are near-copies of each other). Each base gets variants of the kinds near-dedup must
catch: an exact copy, renamed identifiers (two functions/variables renamed everywhere),
reformatted (2-space indentation, blank lines added, trailing comments stripped of spacing) and
a few lines changed (3 lines edited, 1 deleted, 1 inserted).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from data_prep.sources import _walk, stdlib_dir

VARIANT_KINDS = ("exact", "renamed", "reformatted", "edited")
_DEF = re.compile(r"^\s*(?:def|class)\s+([A-Za-z_]\w{3,})|^([a-z_]\w{3,})\s*=", re.M)


@dataclass
class PlantedDoc:
    text: str
    group: int  # index of the base it derives from
    kind: str  # "base" or one of VARIANT_KINDS


def stdlib_bases(n: int, seed: int = 0, min_lines: int = 60, max_lines: int = 600) -> list[str]:
    """`n` distinct stdlib module texts (sorted path order, then a seeded sample)."""
    root = stdlib_dir()
    paths = []
    skip = {"encodings", "site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "idlelib",
            "lib2to3"}
    for p in _walk(root, (".py",), skip):
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if min_lines <= text.count("\n") <= max_lines and "generated" not in text[:500].lower():
            paths.append(text)
    rng = random.Random(seed)
    rng.shuffle(paths)
    if len(paths) < n:
        raise ValueError(f"only {len(paths)} suitable stdlib modules, asked for {n}")
    return paths[:n]


def rename_identifiers(text: str, rng: random.Random, k: int = 2) -> str:
    names = sorted(set(a or b for a, b in _DEF.findall(text)))
    for name in rng.sample(names, min(k, len(names))):
        text = re.sub(rf"\b{re.escape(name)}\b", name + "_renamed", text)
    return text


def reformat(text: str) -> str:
    out = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = (len(line) - len(stripped)) // 2
        out.append(" " * indent + stripped.rstrip())
        if stripped.startswith(("def ", "class ")):
            out.append("")
    return "\n".join(out) + "\n\n"


def edit_lines(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for i in rng.sample(range(len(lines)), 3):
        lines[i] = lines[i] + "  # edited"
    del lines[rng.randrange(len(lines))]
    lines.insert(rng.randrange(len(lines)), "value = compute(value) + 1")
    return "\n".join(lines) + "\n"


def planted_corpus(n_bases: int, seed: int = 0, distinct_only: int = 0) -> list[PlantedDoc]:
    """Bases plus one variant of each kind per base, and `distinct_only` extra bases without
    variants; shuffled with `seed`."""
    rng = random.Random(seed)
    texts = stdlib_bases(n_bases + distinct_only, seed)
    docs = []
    for g, base in enumerate(texts):
        docs.append(PlantedDoc(base, g, "base"))
        if g >= n_bases:
            continue
        docs.append(PlantedDoc(base, g, "exact"))
        docs.append(PlantedDoc(rename_identifiers(base, rng), g, "renamed"))
        docs.append(PlantedDoc(reformat(base), g, "reformatted"))
        docs.append(PlantedDoc(edit_lines(base, rng), g, "edited"))
    rng.shuffle(docs)
    return docs


def write_corpus(docs: list[PlantedDoc], root: str | Path) -> list[Path]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(docs):
        p = root / f"doc_{i:05d}.py"
        p.write_text(d.text, encoding="utf-8")
        paths.append(p)
    return paths


def score(docs: list[PlantedDoc], kept: list[bool]) -> dict[str, float]:
    """Precision/recall of removal against ground truth: a removed doc is a true positive when
    another doc of its group is kept; recall counts removed docs over the planted duplicates
    (all docs of a group but one)."""
    groups: dict[int, list[int]] = {}
    for i, d in enumerate(docs):
        groups.setdefault(d.group, []).append(i)
    removed = [i for i, k in enumerate(kept) if not k]
    true_pos = sum(1 for i in removed if any(kept[j] for j in groups[docs[i].group]))
    planted = sum(len(v) - 1 for v in groups.values())
    lost_groups = sum(1 for v in groups.values() if not any(kept[j] for j in v))
    # Pair recall per kind: the base and its variant are not both kept (either may be the one kept).
    base_of = {d.group: i for i, d in enumerate(docs) if d.kind == "base"}
    by_kind = {}
    for kind in VARIANT_KINDS:
        pairs = [(base_of[d.group], i) for i, d in enumerate(docs) if d.kind == kind]
        by_kind[f"recall_{kind}"] = sum(1 for b, v in pairs if not (kept[b] and kept[v])) / max(1, len(pairs))
    return {
        "precision": true_pos / max(1, len(removed)),
        "recall": min(true_pos, planted) / max(1, planted),
        "distinct_kept": 1 - lost_groups / max(1, len(groups)),
        **by_kind,
    }
