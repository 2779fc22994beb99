"""A small byte-level BPE vocabulary in CLIP's format, trained on a word list.

No installed package ships a CLIP vocabulary, so the built-in tiny pipeline
trains its own: the 256 byte symbols, the same with the end-of-word marker
``</w>``, one token per learned merge, then CLIP's two special tokens.
"""
from __future__ import annotations

from collections import Counter

END = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def train_bpe(words: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn up to ``num_merges`` merges from ``words``; return (vocab, merges).

    Ties between equally frequent pairs break on the pair itself, so the
    result is deterministic.
    """
    table = bytes_to_unicode()
    corpus: Counter[tuple[str, ...]] = Counter()
    for word in words:
        symbols = [table[b] for b in word.lower().encode("utf-8")]
        if symbols:
            symbols[-1] += END
            corpus[tuple(symbols)] += 1

    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best, freq = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if freq < 2:
            break
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, f in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += f
        corpus = merged

    base = list(table.values())
    tokens = base + [c + END for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab, merges
