"""`lmfix build-embeddings` and `lmfix embeddings`, run in-process: summaries and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfix.cli import main

from .conftest import write_tiny_corpus


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def artifact(tiny_corpus_dir: Path, tmp_path: Path, capsys) -> Path:
    out = tmp_path / "arts" / "pmi.npz"
    assert main(["build-embeddings", "pmi", "--corpus", str(tiny_corpus_dir), "--dim", "8", "-o", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("method", ["orthogonal", "word2vec", "pmi", "hadamard"])
def test_build_prints_summary_and_writes_artifact(tiny_corpus_dir: Path, tmp_path: Path, capsys, method: str):
    out = tmp_path / f"{method}.npz"
    argv = ["build-embeddings", method, "--corpus", str(tiny_corpus_dir), "--dim", "16", "-o", str(out)]
    extra = {"word2vec": ["--workers", "1", "--epochs", "1", "--cbow"], "orthogonal": ["--no-row-norm"]}
    assert main(argv + extra.get(method, [])) == 0
    text = capsys.readouterr().out
    assert f"{method} embeddings for tiny: 61 x 16, built in" in text and "peak memory" in text
    for label in ("options", "row norms", "coherence", "distinct", "id", f"written to {out}"):
        assert label in text
    assert out.is_file()
    if method == "orthogonal":
        assert "row_norm=False" in text and "columns orthonormal" in text
    if method == "word2vec":
        assert "sg=False" in text and "CBOW, 1 worker thread(s)" in text


def test_build_without_output_uses_the_cache(tiny_corpus_dir: Path, isolated_cache: Path, capsys):
    argv = ["build-embeddings", "hadamard", "--corpus", str(tiny_corpus_dir), "--dim", "16", "--layout", "truncated"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "built in" in out and "cache" not in out.splitlines()[0]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "loaded from cache (built in" in out and str(isolated_cache / "embeddings") in out
    assert main([*argv, "--force"]) == 0
    out = capsys.readouterr().out
    assert "built in" in out and "cache" not in out.splitlines()[0]


def test_info_neighbors_export(artifact: Path, tiny_corpus_dir: Path, capsys):
    assert main(["embeddings", "info", str(artifact), "--corpus", str(tiny_corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert "pmi, 61 x 8, corpus tiny" in out and "coherence" in out and "aligned" in out
    assert main(["embeddings", "neighbors", str(artifact), "w3", "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(len(line.split()) == 2 for line in lines)
    assert main(["embeddings", "export", str(artifact), "--format", "word2vec", "--binary"]) == 0
    assert "binary word2vec format" in capsys.readouterr().out
    assert artifact.with_suffix(".bin").is_file()


@pytest.mark.parametrize(
    "argv,message",
    [
        ("build-embeddings svd --corpus {corpus}", "unknown embedding method 'svd'"),
        ("build-embeddings pmi --corpus {corpus} --dim 0", "--dim must be an integer >= 1"),
        ("build-embeddings orthogonal --corpus {corpus} --dim 100", "orthogonal needs --dim <= the vocabulary"),
        ("build-embeddings orthogonal --corpus {corpus} --window 3", "orthogonal has no option 'window'"),
        ("build-embeddings pmi --corpus {tmp}/nowhere", "not found"),
        ("build-embeddings pmi --corpus {corpus} -o {tmp}/a-file/x.npz", "not a writable directory"),
        ("build-embeddings pmi --corpus {corpus} -o {tmp}", "it is a directory"),
        ("embeddings info {tmp}/truncated.npz", "is damaged or not an embedding artifact"),
        ("embeddings info {tmp}/missing.npz", "no embedding artifact at"),
        ("embeddings info {artifact} --corpus {tmp}/other", "built for another vocabulary"),
        ("embeddings neighbors {artifact} zebra", "'zebra' is not in"),
        ("embeddings export {artifact} -o {tmp}", "it is a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv: str, message: str, tmp_path: Path, tiny_corpus_dir: Path,
                                      artifact: Path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "truncated.npz").write_bytes(artifact.read_bytes()[:500])
    write_tiny_corpus(tmp_path / "other", vocab=30, seed=3)
    before = _files(tmp_path)
    assert main(argv.format(corpus=tiny_corpus_dir, tmp=tmp_path, artifact=artifact).split()) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmfix: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert _files(tmp_path) == before and _files(artifact.parent) == ["pmi.npz"]  # nothing partial left
