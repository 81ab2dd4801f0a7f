"""A built-in, seeded set of sentences to check a text model with its tokenizer on.

Varied on purpose: empty and blank strings, ASCII prose, accents and other Latin letters,
Cyrillic, Greek, CJK, Arabic, emoji, combining marks, control characters and odd whitespace,
digits and punctuation, and texts far longer than any model's maximum (truncation).
"""

from __future__ import annotations

import numpy as np

BASE = (
    "",
    " ",
    "\t\n",
    "hello world",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Is this the real life? Is this just fantasy?",
    "running runs ran runner",
    "E-mail me at someone@example.com, or call +1 (555) 010-9999.",
    "3.14159 is close to pi; 2,718 is not e.",
    "UPPER lower MiXeD cAsE",
    "Café au lait, crème brûlée and a piñata.",
    "Über naïve façade: déjà vu, résumé, coöperate.",
    "Ærøskøbing ligger på Ærø.",
    "Привет, как дела?",
    "Καλημέρα κόσμε",
    "東京は日本の首都です。",
    "我喜欢自然语言处理",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "emoji 🙂 and 🚀 rockets",
    "combining e\u0301 and a\u0300 marks",
    "tabs\tand\nnewlines\r\nand  double  spaces",
    "control\u0007char and zero\u200bwidth",
    "don't won't it's y'all",
    "!!!???...,,,;;;",
    "#hashtag @mention $dollar %percent ^caret &amp *star",
    "a",
    "the the the the the",
    "Straße, Maß und Fuß",
    "İstanbul ve Iğdır",
    "Ça va? Ñandú. Œuvre.",
)
WORDS = tuple(" ".join(BASE).split())


def sentences(n: int = 300, seed: int = 0, long_words: int = 700) -> list[str]:
    """n sentences: every BASE entry, long texts of long_words words (past any maximum), and
    seeded mixes of 1 to 60 words from BASE."""
    rng = np.random.default_rng(seed)
    out = list(BASE)
    for k in range(3):
        idx = rng.integers(0, len(WORDS), long_words + 50 * k)
        out.append(" ".join(WORDS[int(i)] for i in idx))
    while len(out) < n:
        count = int(rng.integers(1, 61))
        idx = rng.integers(0, len(WORDS), count)
        out.append(" ".join(WORDS[int(i)] for i in idx))
    return out[:n]
