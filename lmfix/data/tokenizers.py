"""Tokenizers: WikiText word level, or sentencepiece subwords trained on the train split.

Both turn one line of text into a list of string tokens ending in ``<eos>``; the
vocabulary maps strings to ids, so every later stage is tokenizer-agnostic.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lmfix.data.vocab import EOS, UNK
from lmfix.errors import CorpusError

TOKENIZERS = ("word", "spm")
SPM_TYPES = ("unigram", "bpe")
SPM_MODEL = "spm.model"
# Bumped when the same text and settings give other tokens, so that prepared corpora made before are rebuilt,
# not reused. 2: lines end at "\n" only; text outside the sentencepiece model is <spm-unk>, not a type of its own.
VERSION = 2


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "word"
    vocab_size: int | None = None  # spm only
    spm_type: str = "unigram"

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZERS:
            raise CorpusError(
                f"unknown tokenizer {self.kind!r}; choose one of {', '.join(TOKENIZERS)}"
            )
        if self.kind == "word" and (self.vocab_size is not None or self.spm_type != "unigram"):
            raise CorpusError("--vocab-size and --spm-type are for --tokenizer spm; drop them for word")
        if self.kind == "spm":
            if self.spm_type not in SPM_TYPES:
                raise CorpusError(
                    f"unknown --spm-type {self.spm_type!r}; choose one of {', '.join(SPM_TYPES)}"
                )
            if self.vocab_size is None or self.vocab_size < 8:
                raise CorpusError("--tokenizer spm needs --vocab-size K with K >= 8, e.g. 8000")

    @property
    def key(self) -> str:
        """Directory name of the prepared corpus for these settings."""
        return "word" if self.kind == "word" else f"spm-{self.spm_type}-{self.vocab_size}"

    @property
    def meta(self) -> dict:
        """What meta.json records of the tokenizer: a prepared corpus is reused only when this matches."""
        return {**asdict(self), "version": VERSION}


class WordTokenizer:
    """WikiText convention: split on whitespace, one ``<eos>`` per line (empty lines too)."""

    def tokenize(self, lines: Iterable[str]) -> list[list[str]]:
        return [line.split() + [EOS] for line in lines]

    def extra_types(self) -> list[str]:
        return []


class SentencePieceTokenizer:
    """Subword pieces from a sentencepiece model; ``<eos>`` is added by lmfix per line."""

    def __init__(self, model_path: Path) -> None:
        import sentencepiece as spm

        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    def tokenize(self, lines: Iterable[str]) -> list[list[str]]:
        """Pieces by id: ``out_type=str`` gives back the text of an unknown piece, which would make a rare
        train character a type outside the model and an unseen valid/test one WikiText's ``<unk>``; by id it
        is the model's own unknown piece, so the types are exactly the model's pieces and ``<eos>``."""
        pieces = self.pieces
        return [[pieces[i] for i in ids] + [EOS] for ids in self.sp.encode(list(lines))]

    def extra_types(self) -> list[str]:
        """Every piece of the model gets a row, even if the encoded train split never uses it."""
        return self.pieces


def train_sentencepiece(cfg: TokenizerConfig, train_file: Path, out_dir: Path) -> Path:
    """Train a sentencepiece model on ``train_file``; WikiText's literal ``<unk>`` stays one piece."""
    import sentencepiece as spm

    prefix = out_dir / SPM_MODEL.removesuffix(".model")
    try:
        spm.SentencePieceTrainer.train(
            input=str(train_file),
            model_prefix=str(prefix),
            vocab_size=cfg.vocab_size,
            model_type=cfg.spm_type,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            unk_piece="<spm-unk>",
            user_defined_symbols=[UNK],
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise CorpusError(
            f"sentencepiece could not train a {cfg.vocab_size}-piece {cfg.spm_type} model on "
            f"{train_file}: {msg} (choose a smaller --vocab-size)"
        ) from exc
    return out_dir / SPM_MODEL


def make_tokenizer(cfg: TokenizerConfig, prepared_dir: Path) -> WordTokenizer | SentencePieceTokenizer:
    if cfg.kind == "word":
        return WordTokenizer()
    return SentencePieceTokenizer(prepared_dir / SPM_MODEL)
