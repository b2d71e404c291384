"""The corpus stage: find the text, verify it, tokenize it once, cache the ids.

``load("wikitext-2")`` returns the vocabulary and one int64 id tensor per split;
the first call prepares and caches (a few seconds), later calls read the cache
(well under a second). Known corpora are described by manifests in ``corpora/``;
any directory with train/valid/test text works too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmfix import __version__, atomic
from lmfix.data.sources import (
    SPLITS,
    CorpusNotFoundError,
    Manifest,
    cache_root,
    file_checksums,
    load_manifest,
    read_text,
    resolve,
    split_lines,
    verify_split,
)
from lmfix.data.tokenizers import TokenizerConfig, make_tokenizer, train_sentencepiece
from lmfix.data.vocab import UNK, Vocab
from lmfix.errors import CorpusError

META = "meta.json"


# --------------------------------------------------------------------------- prepared corpus


@dataclass
class Corpus:
    """A prepared corpus: vocabulary plus one int64 id array per split.

    ``train``/``valid``/``test`` are torch tensors sharing memory with ``ids``;
    torch is imported only when they are used, so ``lmfix prepare`` starts fast.
    """

    name: str
    vocab: Vocab
    ids: dict[str, np.ndarray]
    tokenizer: TokenizerConfig
    path: Path
    stats: dict

    def split(self, name: str):
        """The ids of split ``name`` as an int64 torch tensor."""
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        import torch

        return torch.from_numpy(self.ids[name])

    @property
    def train(self):
        return self.split("train")

    @property
    def valid(self):
        return self.split("valid")

    @property
    def test(self):
        return self.split("test")

    def checksums(self) -> dict[str, str]:
        """sha256 (16 hex digits) of each split's token ids: runs compare only on the same text, wherever it is."""
        return {split: hashlib.sha256(np.ascontiguousarray(self.ids[split], dtype="<i8").tobytes()).hexdigest()[:16]
                for split in SPLITS}

    def lines(self, split: str = "train") -> list[list[str]]:
        """The split as token lines (each ends in ``<eos>``), e.g. for word2vec."""
        ids = self.ids[split]
        ends = np.flatnonzero(ids == self.vocab.eos_id) + 1
        itos = self.vocab.itos
        return [[itos[i] for i in chunk] for chunk in np.split(ids, ends) if len(chunk)]


def _source_stamp(files: dict[str, Path]) -> dict:
    stamps = {}
    for split, path in files.items():
        st = path.stat()
        stamps[split] = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stamps


def prepared_dir(name: str, files: dict[str, Path], manifest: Manifest | None, tok: TokenizerConfig) -> Path:
    if manifest is None:  # a user directory: key the cache by its absolute path
        digest = hashlib.sha256(str(files["train"].parent.resolve()).encode()).hexdigest()[:10]
        name = f"{name}-{digest}"
    return cache_root() / name / "prepared" / tok.key


def _encode(files: dict[str, Path], manifest: Manifest | None, tok: TokenizerConfig, out: Path, verify: bool) -> dict:
    texts: dict[str, list[str]] = {}
    verified = []
    for split, path in files.items():
        text = read_text(path)
        if verify_split(split, path, text, manifest.splits[split] if manifest else None, verify):
            verified.append(split)
        lines = split_lines(text)
        if not any(line.strip() for line in lines):
            raise CorpusError(f"the {split} split {path} is empty; it needs at least one line of text")
        texts[split] = lines
    if tok.kind == "spm":
        train_sentencepiece(tok, files["train"], out)
    tokenizer = make_tokenizer(tok, out)
    tokens = {s: tokenizer.tokenize(lines) for s, lines in texts.items()}
    vocab = Vocab.from_tokens((w for line in tokens["train"] for w in line), tokenizer.extra_types())
    oov = {s: sum(w not in vocab.stoi for line in tokens[s] for w in line) for s in SPLITS}
    if (oov["valid"] or oov["test"]) and vocab.unk_id is None:
        vocab = Vocab.from_tokens((w for line in tokens["train"] for w in line), [*tokenizer.extra_types(), UNK])
    vocab.save(out / "vocab.txt")
    unk = vocab.unk_id if vocab.unk_id is not None else -1
    stats = {"tokens": {}, "lines": {}, "oov": oov}
    for split in SPLITS:
        ids = np.fromiter(
            (vocab.stoi.get(w, unk) for line in tokens[split] for w in line), dtype=np.int32
        )
        np.save(out / f"{split}.npy", ids)
        stats["tokens"][split] = int(ids.size)
        stats["lines"][split] = len(tokens[split])
    stats["vocab_size"] = len(vocab)
    stats["vocab_fingerprint"] = vocab.fingerprint
    stats["verified"] = verified
    if manifest and tok.kind == "word":
        _check_counts(manifest, stats, verified)
    return stats


def _check_counts(manifest: Manifest, stats: dict, verified: list[str]) -> None:
    """The manifest's counts (one <eos> per line, measured on the official files) against what tokenizing
    verified files gave: a mismatch means the word tokenizer drifted, and perplexities would no longer be
    comparable with published ones."""
    expected = [(f"{s} {kind}", getattr(manifest.splits[s], kind), stats[kind][s])
                for s in verified for kind in ("tokens", "lines")]
    if len(verified) == len(SPLITS):  # the vocabulary also depends on valid/test (an <unk> when they have OOVs)
        expected.append(("vocabulary words", manifest.vocab_size, stats["vocab_size"]))
    for what, want, got in expected:
        if want is not None and got != want:
            raise CorpusError(f"{manifest.name}: tokenizing gave {got:,} {what} where its manifest counts {want:,}, "
                              "although the files passed their checksums: this lmfix tokenizes differently from "
                              "the one that wrote the manifest; report it (and use the lmfix that matches)")


def prepare(
    corpus: str = "wikitext-2",
    *,
    data_dir: str | os.PathLike | None = None,
    tokenizer: TokenizerConfig | None = None,
    verify: bool = True,
    force: bool = False,
) -> Corpus:
    """Resolve, verify, tokenize and cache ``corpus``; reuse the cache when it is current."""
    tok = tokenizer or TokenizerConfig()
    try:
        name, files, manifest = resolve(corpus, data_dir)
    except CorpusNotFoundError as exc:
        # The text is gone but a known corpus was prepared before: its ids are enough.
        cached_dir = cache_root() / corpus / "prepared" / tok.key
        meta = None if force else _read_meta(cached_dir / META)
        if meta is None:
            raise
        problem = _unfit(meta, tok, load_manifest(corpus), verify)
        if problem:
            raise CorpusNotFoundError(f"{exc}; its prepared cache {cached_dir} cannot stand in: {problem}") from exc
        warnings.warn(f"source text of {corpus} not found; using the prepared cache {cached_dir}", stacklevel=2)
        prepared = _load_prepared(corpus, cached_dir, tok)
        prepared.stats["from_cache"] = True
        return prepared
    out = prepared_dir(name, files, manifest, tok)
    stamp = _source_stamp(files)
    meta = None if force else _read_meta(out / META)
    cached = meta is not None and meta.get("sources") == stamp and _unfit(meta, tok, manifest, verify) is None
    if not cached:
        t0 = time.perf_counter()
        with atomic.atomic_dir(out) as tmp:
            stats = _encode(files, manifest, tok, tmp, verify)
            meta = {
                "name": name,
                "tokenizer": tok.meta,
                "sources": stamp,
                "stats": stats,
                "lmfix_version": __version__,
                "prepare_seconds": round(time.perf_counter() - t0, 3),
            }
            atomic.write_text(tmp / META, json.dumps(meta, indent=2))
    corpus_obj = _load_prepared(name, out, tok)
    corpus_obj.stats["from_cache"] = cached
    return corpus_obj


def _read_meta(path: Path) -> dict | None:
    """A prepared corpus's meta.json; None when it is missing or damaged (then the corpus is prepared again)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("stats"), dict) else None


def _unfit(meta: dict, tok: TokenizerConfig, manifest: Manifest | None, verify: bool) -> str | None:
    """Why a prepared corpus cannot serve these settings, its sources aside; None when it can."""
    if meta.get("tokenizer") != tok.meta:
        return "it was made with other tokenizer settings or by an older lmfix"
    verified = meta["stats"].get("verified", [])
    unverified = [s for s in SPLITS if manifest and manifest.splits[s].checked and s not in verified]
    if verify and unverified:
        return f"its {', '.join(unverified)} text was not verified (it was prepared with --no-verify)"
    return None


def _load_prepared(name: str, out: Path, tok: TokenizerConfig) -> Corpus:
    """The cached ids and vocabulary, checked against the counts meta.json recorded when they were made."""
    try:
        meta = json.loads((out / META).read_text())
        arrays = {s: np.load(out / f"{s}.npy").astype(np.int64) for s in SPLITS}
        vocab = Vocab.load(out / "vocab.txt")
        problem = _damage(meta["stats"], vocab, arrays)
    except (OSError, ValueError, KeyError, TypeError, CorpusError) as exc:
        cause = exc.__cause__ or exc  # Vocab.load's own message would repeat the advice
        problem = f"{type(cause).__name__}: {cause}"
    if problem:
        raise CorpusError(f"prepared corpus {out} is unreadable ({problem}); rerun with --force")
    stats = dict(meta["stats"], vocab_fingerprint=vocab.fingerprint)
    return Corpus(name, vocab, arrays, tok, out, stats)


def _damage(stats: dict, vocab: Vocab, arrays: dict[str, np.ndarray]) -> str | None:
    """What does not match between the cache's files and its own metadata (caches before the fingerprint
    was recorded are checked by size and id range)."""
    if len(vocab) != stats["vocab_size"]:
        return f"vocab.txt has {len(vocab)} types, meta.json says {stats['vocab_size']}"
    if stats.get("vocab_fingerprint", vocab.fingerprint) != vocab.fingerprint:
        return "vocab.txt is not the vocabulary the ids were made with"
    for split, ids in arrays.items():
        if ids.size != stats["tokens"][split]:
            return f"{split}.npy has {ids.size:,} ids, meta.json says {stats['tokens'][split]:,}"
        if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
            return f"{split}.npy has ids outside the vocabulary"
    return None


def load(corpus: str = "wikitext-2", **kwargs) -> Corpus:
    """The library entry point: a prepared corpus (prepared first if needed)."""
    return prepare(corpus, **kwargs)


def manifest_toml(files: dict[str, Path]) -> str:
    """The ``[splits.*]`` block of a manifest for verified copies of ``files``."""
    blocks = []
    for split in SPLITS:
        path = files[split]
        text = read_text(path)
        sha, tok_sha = file_checksums(text, path.read_bytes())
        lines = split_lines(text)
        tokens = sum(len(line.split()) + 1 for line in lines)
        blocks.append(
            f'[splits.{split}]\nfiles = ["{path.name}"]\nsha256 = "{sha}"\n'
            f'tokens_sha256 = "{tok_sha}"\nlines = {len(lines)}\ntokens = {tokens}\n'
        )
    return "\n".join(blocks)
