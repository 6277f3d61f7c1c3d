"""Redaction of secrets and PII: replaced by `<KIND>` placeholders and counted per kind.

Runs on every kept document before anything is written. Covered: private key blocks (PEM/SSH),
well-known token formats (AWS access key ids, GitHub, Slack, Google, OpenAI, Hugging Face,
JWT), quoted values assigned to password/secret/token/api-key-like names, e-mail addresses and
public IPv4 addresses.

Not handled: IPv6, secrets in unquoted or multi-line values, high-entropy strings without a
telling name or prefix, names and street addresses. Private, loopback and documentation IPs
(127.0.0.1, 10.x, 192.168.x, 192.0.2.x …) are kept: they identify nobody, and dotted version
numbers that look like an IP are only redacted when they parse as a global address.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

_KEY_BLOCK = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK|)-----.*?-----END \1PRIVATE KEY\2-----", re.S
)
_TOKENS = [  # (kind, literal needles that every match contains, pattern)
    ("AWS_ACCESS_KEY_ID", ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA"),
     re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}\b")),
    ("GITHUB_TOKEN", ("gh", "github_pat_"), re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b")),
    ("SLACK_TOKEN", ("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("GOOGLE_API_KEY", ("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("OPENAI_KEY", ("sk-",), re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}")),
    ("HF_TOKEN", ("hf_",), re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("JWT", ("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")),
]
_SECRET_NEEDLES = ("passw", "pwd", "secret", "key", "token")
# NAME = "value" / NAME: 'value' where NAME mentions a secret; the value (no whitespace, >= 4
# chars, not already a placeholder) is replaced and the name kept so the code still reads.
_ASSIGNED_SECRET = re.compile(
    r"""(?ix)
    (\b[\w.-]*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|access[_-]?token
        |private[_-]?key|client[_-]?secret)[\w.-]*["']?\s*(?:=|:|==)\s*[bru]?)
    (["'])(?!<[A-Z_]+>)([^"'\s]{4,})\2
    """
)
_EMAIL = re.compile(r"\b[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IP_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])")


def _public_ip(m: re.Match) -> str:
    try:
        return "<IP_ADDRESS>" if ipaddress.ip_address(m.group(0)).is_global else m.group(0)
    except ValueError:
        return m.group(0)


def _sub_lines(text: str, needles: tuple[str, ...], pattern: re.Pattern, repl, lower: bool = False) -> tuple[str, int]:
    """pattern.subn on the lines that contain a needle only: most files contain none, and a
    substring test is far cheaper than a regex scan from every position."""
    hay = text.lower() if lower else text
    if not any(n in hay for n in needles):
        return text, 0
    lines, total = text.splitlines(keepends=True), 0
    for i, line in enumerate(lines):
        h = line.lower() if lower else line
        if any(n in h for n in needles):
            lines[i], n = pattern.subn(repl, line)
            total += n
    return "".join(lines), total


def redact(text: str) -> tuple[str, Counter]:
    """Return (redacted text, Counter of redactions by kind)."""
    counts: Counter = Counter()

    def note(kind: str, result: tuple[str, int]) -> str:
        if result[1]:
            counts[kind] += result[1]
        return result[0]

    if "PRIVATE KEY" in text:
        text = note("PRIVATE_KEY", _KEY_BLOCK.subn("<PRIVATE_KEY>", text))
    for kind, needles, pattern in _TOKENS:
        text = note(kind, _sub_lines(text, needles, pattern, f"<{kind}>"))
    text = note("SECRET", _sub_lines(text, _SECRET_NEEDLES, _ASSIGNED_SECRET,
                                     lambda m: f"{m.group(1)}{m.group(2)}<SECRET>{m.group(2)}", lower=True))
    text = note("EMAIL", _sub_lines(text, ("@",), _EMAIL, "<EMAIL>"))
    if _IP_HINT.search(text):
        before = text.count("<IP_ADDRESS>")
        text = _IPV4.sub(_public_ip, text)
        if text.count("<IP_ADDRESS>") > before:
            counts["IP_ADDRESS"] += text.count("<IP_ADDRESS>") - before
    return text, counts
