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


_REPO_BEFORE = pytest.StashKey[dict[str, tuple[int, int]]]()


def _repo_outputs() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file where lmfix writes by default inside the repository: the corpus and
    embedding caches, runs/, and the recipes' committed results."""
    places = [ROOT / "corpora", ROOT / "cache", ROOT / "runs", *(ROOT / "recipes").glob("*/results")]
    found = {}
    for place in places:
        for path in place.rglob("*") if place.is_dir() else ():
            if path.is_file():
                info = path.stat()
                found[str(path.relative_to(ROOT))] = (info.st_mtime_ns, info.st_size)
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_REPO_BEFORE] = _repo_outputs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test (or a process it started) wrote into the repository's caches, runs/ or results."""
    before, after = session.stash.get(_REPO_BEFORE, {}), _repo_outputs()
    changed = sorted(path for path, stamp in after.items() if before.get(path) != stamp)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        print(f"\ntests wrote into the repository: {shown} (tests write under tmp_path and their LMFIX_CACHE)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
