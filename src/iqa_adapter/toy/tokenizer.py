"""The toy world's tokenizer: a CLIP tokenizer with one token per caption word, and characters for the rest.

It is an ordinary :class:`transformers.CLIPTokenizer` (byte-pair encoding), built offline from a vocabulary
and merges, saved with ``save_pretrained`` and loaded by ``DiffusionPipeline.from_pretrained`` like any CLIP
tokenizer. The vocabulary holds every printable ASCII character (alone and word-final), every word of
:func:`~iqa_adapter.toy.scenes.caption_words` with the prefixes that its merges build, and the two special
tokens. Each caption word is one token; any other word is spelt out in characters, so every prompt encodes.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer

from .scenes import caption_words

END_OF_WORD = "</w>"
MAX_LENGTH = 32  # tokens per prompt, with the start and end tokens; the longest toy caption has 22


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one word with the given merge ranks (lowest rank merged first)."""
    parts = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(parts) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def word_tokenizer(words: Iterable[str], max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer in which each of ``words`` (lower-case) is a single token.

    For each word in turn, the merges found so far are applied as the tokenizer will apply them; if the word
    is still in pieces, merges joining the pieces left to right are appended. Appended merges rank after all
    earlier ones, so they never change how an earlier word is encoded.
    """
    characters = [chr(code) for code in range(33, 127)]
    vocab = {token: index for index, token in enumerate(characters + [c + END_OF_WORD for c in characters])}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        if word != word.lower() or not word.isascii() or not word.isalpha():
            raise ValueError(f"tokenizer words must be lower-case ASCII letters, got {word!r}")
        parts = _bpe(word, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            parts[:2] = [parts[0] + parts[1]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def toy_tokenizer() -> CLIPTokenizer:
    """The tokenizer of the toy base model: every word of the toy captions is one token."""
    return word_tokenizer(caption_words())
