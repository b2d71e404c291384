"""Shared fixtures: tiny generated corpora, an isolated cache, the real WikiText-2 when present."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_corpora() -> Path | None:
    """Where the real corpora are: $LMFIX_CORPORA, else ../shared/corpora beside the checkout."""
    env = os.environ.get("LMFIX_CORPORA")
    for candidate in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "corpora"]:
        if (candidate / "wikitext-2" / "train.txt").is_file():
            return candidate
    return None


def write_tiny_corpus(directory: Path, lines: int = 300, vocab: int = 60, seed: int = 0) -> Path:
    """A Zipf-ish random-word corpus with empty lines, like WikiText's layout."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    weights = [1.0 / (i + 1) for i in range(vocab)]
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", lines), ("valid", lines // 5), ("test", lines // 5)):
        out = []
        for i in range(n):
            if i % 7 == 0:
                out.append(" ")
            else:
                out.append(" " + " ".join(rng.choices(words, weights, k=rng.randint(3, 15))) + " ")
        (directory / f"{split}.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes prepared corpora and artifacts into its own cache, never the repo's."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LMFIX_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_corpus_dir(tmp_path) -> Path:
    return write_tiny_corpus(tmp_path / "tiny")


@pytest.fixture
def wikitext2_dir() -> Path:
    root = shared_corpora()
    if root is None:
        pytest.skip("WikiText-2 not found: set LMFIX_CORPORA or put it at ../shared/corpora/wikitext-2")
    return root / "wikitext-2"


_CACHE_BEFORE = pytest.StashKey[set[str]]()


def _repo_cache() -> set[str]:
    return {p.name for p in (ROOT / "corpora").iterdir() if p.is_dir()}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_CACHE_BEFORE] = _repo_cache()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test (or a process it started) prepared a corpus into the repo's own cache."""
    new = sorted(_repo_cache() - session.stash.get(_CACHE_BEFORE, set()))
    if new:
        print(f"\ntests wrote into the repository's cache corpora/: {', '.join(new)} (use the test's LMFIX_CACHE)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

