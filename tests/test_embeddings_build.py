"""Embedding builders, artifacts and diagnostics on tiny generated corpora."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from lmfix.data.corpus import Corpus, load
from lmfix.embeddings import METHODS, EmbeddingError, build, cache_path, get_or_build, load_artifact, pmi
from lmfix.embeddings.artifact import cache_dir
from lmfix.embeddings.diagnostics import coherence, diagnose, export_word2vec, neighbors

from .conftest import ROOT, write_tiny_corpus

# Fast settings for tests: word2vec single-threaded (bit-reproducible) and short.
FAST = {"word2vec": {"workers": 1, "epochs": 2}}


@pytest.fixture
def tiny(tiny_corpus_dir: Path) -> Corpus:
    return load(str(tiny_corpus_dir))


@pytest.fixture
def handmade(tmp_path: Path) -> Corpus:
    """Lines chosen for PMI edge cases: a one-word line, a word seen only in valid (<unk>), empty lines."""
    d = tmp_path / "handmade"
    d.mkdir()
    train = [
        "the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "", "lonely",
        "the mat and the log sat", "on a mat the cat", "dog dog cat", "",
    ]
    (d / "train.txt").write_text("\n".join(train) + "\n")
    (d / "valid.txt").write_text("the zebra sat\n")
    (d / "test.txt").write_text("the cat\n")
    return load(str(d))


def _build(method: str, corpus: Corpus, dim: int, seed: int = 0, **options):
    return build(method, corpus, dim, seed, **{**FAST.get(method, {}), **options})


# --------------------------------------------------------------------------- methods


def test_orthogonal_columns_are_orthonormal(tiny: Corpus):
    vocab_size = len(tiny.vocab)
    raw = _build("orthogonal", tiny, 16, row_norm=False).matrix
    np.testing.assert_allclose(raw.T @ raw, np.eye(16), atol=1e-5)
    square = _build("orthogonal", tiny, vocab_size, row_norm=False).matrix  # d = V: rows orthonormal too
    np.testing.assert_allclose(square @ square.T, np.eye(vocab_size), atol=1e-5)
    normed = _build("orthogonal", tiny, 16).matrix
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1, atol=1e-6)
    # Unit rows of a V x d orthonormal basis: columns stay orthogonal to about 1/sqrt(V).
    gram = normed.T @ normed * 16 / vocab_size
    assert np.abs(gram - np.eye(16)).max() < 0.5


@pytest.mark.parametrize("method", list(METHODS))
def test_same_seed_same_matrix(tiny: Corpus, method: str):
    a, b, c = (_build(method, tiny, 16, seed) for seed in (3, 3, 4))
    assert a.id == b.id != c.id
    if method == "hadamard":
        assert a.hadamard == b.hadamard != c.hadamard
    else:
        assert np.array_equal(a.matrix, b.matrix)
        assert not np.allclose(a.matrix, c.matrix)
        assert a.matrix.dtype == np.float32 and a.matrix.shape == (len(tiny.vocab), 16)
        np.testing.assert_allclose(np.linalg.norm(a.matrix, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("layout", ["distinct", "truncated"])
def test_hadamard_rows_come_from_scipy_hadamard(tiny: Corpus, layout: str):
    vocab_size, dim = len(tiny.vocab), 16  # V=61 > d: the paper's truncation repeats rows
    art = _build("hadamard", tiny, dim, layout=layout)
    assert art.matrix is None and art.shape == (vocab_size, dim)
    layout_obj = art.hadamard
    reference = scipy.linalg.hadamard(layout_obj.n)[:vocab_size][:, list(layout_obj.columns)] / np.sqrt(dim)
    np.testing.assert_array_equal(art.dense(), reference.astype(np.float32))
    if layout == "truncated":
        np.testing.assert_array_equal(reference, scipy.linalg.hadamard(layout_obj.n)[:vocab_size, :dim] / 4)
    distinct = len(np.unique(reference, axis=0))
    diag = diagnose(art, sample=vocab_size)
    assert diag.distinct_rows == distinct == (vocab_size if layout == "distinct" else dim)
    assert (diag.coherence_mean, diag.coherence_max) == pytest.approx(coherence(reference))
    assert diag.coherence_max < 1 if layout == "distinct" else diag.coherence_max == pytest.approx(1)
    assert diag.norm_min == pytest.approx(1) and diag.norm_max == pytest.approx(1)


def _dense_ppmi(corpus: Corpus, window: int, dynamic: bool, cds: float, shift: float) -> np.ndarray:
    """PPMI the slow, obvious way: loop over every line and position."""
    vocab_size = len(corpus.vocab)
    counts = np.zeros((vocab_size, vocab_size))
    for line in corpus.lines("train"):
        ids = [corpus.vocab.stoi[w] for w in line]
        for i in range(len(ids)):
            for k in range(1, window + 1):
                if i + k < len(ids):
                    weight = (window - k + 1) / window if dynamic else 1.0
                    counts[ids[i], ids[i + k]] += weight
                    counts[ids[i + k], ids[i]] += weight
    p_context = counts.sum(axis=0) ** cds
    p_context /= p_context.sum()
    p_word = counts.sum(axis=1) / counts.sum()
    p_joint = counts / counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.log(p_joint / np.outer(p_word, p_context)) - np.log(shift)
    return np.where(counts > 0, np.maximum(values, 0), 0)


@pytest.mark.parametrize("window,dynamic,cds,shift", [(2, True, 0.75, 1.0), (3, False, 1.0, 2.0)])
@pytest.mark.parametrize("svd", ["randomized", "arpack"])
def test_pmi_matches_dense_reference(handmade: Corpus, window, dynamic, cds, shift, svd):
    vocab, dim, eig = handmade.vocab, 4, 0.5
    reference = _dense_ppmi(handmade, window, dynamic, cds, shift)
    counts = pmi.cooccurrence(handmade.ids["train"], vocab.eos_id, len(vocab), window, dynamic)
    np.testing.assert_allclose(pmi.ppmi(counts, cds, shift).toarray(), reference, rtol=1e-5, atol=1e-6)

    art = _build("pmi", handmade, dim, window=window, dynamic_window=dynamic, cds=cds, shift=shift, eig=eig, svd=svd)
    u, s, _ = np.linalg.svd(reference)
    expected = u[:, :dim] * s[:dim] ** eig
    norms = np.linalg.norm(expected, axis=1)
    live = norms > 1e-9  # the rest have no positive PMI and get random unit rows
    expected = expected[live] / norms[live, None]
    # Compare Gram matrices: they do not depend on the sign of each singular vector.
    got = art.matrix[live]
    np.testing.assert_allclose(got @ got.T, expected @ expected.T, atol=2e-4)
    assert not live[vocab.stoi["<unk>"]]  # never in training: a fallback row, still unit length
    np.testing.assert_allclose(np.linalg.norm(art.matrix, axis=1), 1, atol=1e-6)


def test_word2vec_rows_follow_vocabulary_order(tiny: Corpus):
    from gensim.models import Word2Vec

    art = _build("word2vec", tiny, 12, seed=5)
    assert art.vocab == tiny.vocab
    model = Word2Vec(vector_size=12, window=5, min_count=1, sg=1, negative=5, sample=1e-3, workers=1, seed=5)
    model.build_vocab_from_freq(dict(zip(tiny.vocab.itos, tiny.vocab.counts, strict=True)))
    lines = tiny.lines("train")
    model.train(lines, total_examples=len(lines), epochs=2)
    assert model.wv.index_to_key != list(tiny.vocab.itos)  # gensim's own order differs: reordering matters
    for i, word in enumerate(tiny.vocab.itos):
        if tiny.vocab.counts[i]:
            vector = model.wv[word]
            np.testing.assert_allclose(art.matrix[i], vector / np.linalg.norm(vector), rtol=1e-5, atol=1e-6)


def test_word2vec_min_count_leaves_rare_types_random_but_distinct(tiny: Corpus):
    art = _build("word2vec", tiny, 12, min_count=50)
    rare = np.array(tiny.vocab.counts) < 50
    assert rare.any()
    assert diagnose(art).distinct_rows == len(tiny.vocab)
    assert any("types below min_count 50" in note for note in art.build["notes"])


# --------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize("method", list(METHODS))
def test_artifact_round_trip(tiny: Corpus, tmp_path: Path, method: str):
    art = _build(method, tiny, 16, seed=2)
    path = art.save(tmp_path / "out" / "e.npz")
    loaded = load_artifact(path, tiny.vocab)
    assert (loaded.method, loaded.shape, loaded.seed, loaded.options) == (method, (len(tiny.vocab), 16), 2, art.options)
    assert loaded.id == art.id and loaded.vocab == tiny.vocab and loaded.path == path
    assert loaded.corpus == tiny.name and loaded.build["lmfix_version"]
    np.testing.assert_array_equal(loaded.dense(), art.dense())
    with np.load(path) as z:  # plain numpy: users' code can read it without lmfix
        assert ("matrix" in z.files) == (method != "hadamard")
    assert [p.name for p in path.parent.iterdir()] == ["e.npz"]  # no temporary left behind


def test_artifact_for_another_vocabulary_is_refused(tiny: Corpus, tmp_path: Path):
    other = load(str(write_tiny_corpus(tmp_path / "other", vocab=40, seed=1)))
    path = _build("orthogonal", tiny, 8).save(tmp_path / "e.npz")
    with pytest.raises(EmbeddingError, match="built for another vocabulary .* rebuild it"):
        load_artifact(path, other.vocab)
    assert load_artifact(path, tiny.vocab).vocab_fingerprint == tiny.vocab.fingerprint


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "missing"])
def test_damaged_artifact_is_refused(tiny: Corpus, tmp_path: Path, damage: str):
    path = _build("pmi", tiny, 8).save(tmp_path / "e.npz")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_text("not an artifact")
    else:
        path.unlink()
    with pytest.raises(EmbeddingError, match="rebuild|build one") as err:
        load_artifact(path)
    assert "\n" not in str(err.value)


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    """Replace some of an artifact's arrays, as a foreign writer or a damaged copy would."""
    with np.load(path) as z:
        kept = dict(z)
    with open(path, "wb") as f:
        np.savez(f, **{**kept, **arrays})


@pytest.mark.parametrize("damage", ["short-counts", "float-counts", "nan-row", "float64", "header-list"])
def test_inconsistent_artifact_is_refused(tiny: Corpus, tmp_path: Path, damage: str):
    """Files whose header and content hash agree but whose arrays no build gives are refused, not used."""
    art = _build("pmi", tiny, 8)
    if damage == "nan-row":  # the header's id then covers the NaN: only the values' check can catch it
        art.matrix[3] = np.nan
    path = art.save(tmp_path / "e.npz")
    if damage == "short-counts":
        _rewrite(path, counts=np.asarray(tiny.vocab.counts[:5], dtype=np.int64))
    elif damage == "float-counts":
        _rewrite(path, counts=np.asarray(tiny.vocab.counts, dtype=np.float64))
    elif damage == "float64":  # the same values, so the same id
        _rewrite(path, matrix=art.matrix.astype(np.float64))
    elif damage == "header-list":
        _rewrite(path, header=np.frombuffer(b"[1]", dtype=np.uint8))
    expected = {"short-counts": "5 counts for", "float-counts": "not a list of integers",
                "nan-row": "NaN or infinite values in 1 of its rows", "float64": "matrix is float64, not float32",
                "header-list": "its header is not a JSON object"}[damage]
    with pytest.raises(EmbeddingError, match=re.escape(expected)) as err:
        load_artifact(path, tiny.vocab)
    assert f"{path} is damaged" in str(err.value) and str(err.value).endswith("rebuild it with lmfix build-embeddings")
    assert "\n" not in str(err.value)


def test_get_or_build_caches_by_settings(tiny: Corpus, isolated_cache: Path):
    first = get_or_build("pmi", tiny, 8, seed=1, window=3)
    assert not first.from_cache and first.path.is_file()
    assert first.path.is_relative_to(isolated_cache / "embeddings") and cache_dir() == isolated_cache / "embeddings"
    again = get_or_build("pmi", tiny, 8, seed=1, window=3)
    assert again.from_cache and again.id == first.id and again.path == first.path
    assert cache_path("pmi", tiny, 8, seed=1, window=2) != first.path
    assert cache_path("pmi", tiny, 8, seed=2, window=3) != first.path
    # Equal settings spelt differently share a key; word2vec's threads change the values (not reproducible
    # beyond one), so they are part of it.
    assert cache_path("pmi", tiny, np.int64(8), shift=2) == cache_path("pmi", tiny, 8, shift=2.0)
    assert cache_path("word2vec", tiny, 8, workers=1) != cache_path("word2vec", tiny, 8, workers=2)
    first.path.write_text("broken")  # a damaged cache entry is rebuilt, with a warning
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = get_or_build("pmi", tiny, 8, seed=1, window=3)
    assert rebuilt.id == first.id and not rebuilt.from_cache


@pytest.mark.parametrize(
    "method,dim,options,message",
    [
        ("svd", 8, {}, "unknown embedding method 'svd'; choose one of orthogonal, word2vec, pmi, hadamard"),
        ("orthogonal", 0, {}, "--dim must be an integer >= 1"),
        ("orthogonal", 1000, {}, "orthogonal needs --dim <= the vocabulary size"),
        ("pmi", 1000, {}, "pmi needs --dim < the vocabulary size"),
        ("orthogonal", 8, {"window": 2}, "orthogonal has no option 'window'"),
        ("pmi", 8, {"window": "2"}, "pmi option window must be int"),
        ("pmi", 8, {"cds": 1.5}, "pmi cds must be in"),
        ("pmi", 8, {"svd": "lanczos"}, "unknown pmi svd solver"),
        ("word2vec", 8, {"negative": 0}, "word2vec negative must be >= 1"),
        ("hadamard", 8, {"layout": "rows"}, "unknown hadamard layout"),
        ("hadamard", 2, {}, "hadamard: dim=2 columns cannot give"),
    ],
)
def test_bad_settings_are_refused(tiny: Corpus, method, dim, options, message):
    with pytest.raises(EmbeddingError, match=re.escape(message)):
        build(method, tiny, dim, **options)


def test_negative_seed_is_refused(tiny: Corpus):
    with pytest.raises(EmbeddingError, match=re.escape("--seed must be an integer >= 0, got -1")):
        build("orthogonal", tiny, 8, -1)


# --------------------------------------------------------------------------- diagnostics


def test_neighbors_rank_by_cosine(tiny: Corpus):
    art = _build("pmi", tiny, 8)
    word = tiny.vocab.itos[3]
    result = neighbors(art, word, k=5)
    assert len(result) == 5 and word not in [w for w, _ in result]
    sims = art.matrix @ art.matrix[3]
    sims[3] = -np.inf
    assert [w for w, _ in result] == [tiny.vocab.itos[i] for i in np.argsort(-sims, kind="stable")[:5]]
    assert [c for _, c in result] == pytest.approx(sorted(sims)[::-1][:5], abs=1e-5)
    with pytest.raises(EmbeddingError, match="not in the artifact's vocabulary"):
        neighbors(art, "W3", 5)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("method", ["pmi", "hadamard"])
def test_export_reads_back_with_gensim(tiny: Corpus, tmp_path: Path, binary: bool, method: str):
    from gensim.models import KeyedVectors

    art = _build(method, tiny, 8)
    path = export_word2vec(art, tmp_path / "vectors.w2v", binary=binary)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert kv.index_to_key == list(tiny.vocab.itos)
    np.testing.assert_allclose(kv.vectors, art.dense(), rtol=1e-6, atol=1e-7)


@pytest.mark.integration
@pytest.mark.slow
def test_wikitext2_builds_align_with_its_vocabulary(wikitext2_dir: Path, tmp_path: Path):
    corpus = load(str(wikitext2_dir))
    assert len(corpus.vocab) == 33_278
    for method in ("orthogonal", "hadamard"):
        art = build(method, corpus, 512)
        loaded = load_artifact(art.save(tmp_path / f"{method}.npz"), corpus.vocab)
        assert loaded.shape == (33_278, 512) and loaded.id == art.id
        assert diagnose(loaded, sample=500).distinct_rows == 33_278


def _id_of_fresh_build(corpus_dir: Path, out: Path, method: str, *args: str, **env: str) -> str:
    """The artifact id that ``lmfix build-embeddings`` gives in a new process with ``env`` added to ours."""
    proc = subprocess.run([sys.executable, "-m", "lmfix", "build-embeddings", method, "--corpus", str(corpus_dir),
                           "--seed", "3", "-o", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return load_artifact(out).id


@pytest.mark.parametrize("method", ["word2vec", "pmi", "orthogonal", "hadamard"])
def test_two_builds_in_fresh_processes_give_the_same_artifact(tiny_corpus_dir, tmp_path, method):
    """Same command, same seed: the same bytes (id), whatever each process's hash seed."""
    ids = [_id_of_fresh_build(tiny_corpus_dir, tmp_path / f"{run}.npz", method, "--dim", "16", PYTHONHASHSEED="random")
           for run in ("a", "b")]
    assert ids[0] == ids[1]


def _many_types_corpus(directory: Path, types: int) -> Path:
    """Every type once, 20 to a line: a vocabulary as large as a real corpus's, in a few hundred kB."""
    words = [f"w{i}" for i in range(types)]
    text = "".join(" " + " ".join(words[i:i + 20]) + " \n" for i in range(0, types, 20))
    directory.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (directory / f"{split}.txt").write_text(text, encoding="utf-8")
    return directory


# Sizes at which OpenBLAS rounds differently with 1 and 2 threads unpinned (smaller ones happen to round alike).
@pytest.mark.slow
@pytest.mark.parametrize("method,args", [("pmi", ("--dim", "128")), ("pmi", ("--dim", "128", "--svd", "arpack")),
                                         ("orthogonal", ("--dim", "512"))])
def test_blas_threads_do_not_change_the_artifact(tmp_path: Path, method: str, args: tuple[str, ...]):
    """torchrun gives each worker one BLAS thread, a plain run one per core: both must build the same bytes,
    or a run that has to rebuild its matrix is refused as "the fixed matrix changed"."""
    if method == "orthogonal":  # QR's rounding follows the threads only at some large sizes: WikiText-2's V x 512
        corpus_dir = _many_types_corpus(tmp_path / "corpus", 33_277)  # with <eos>, 33,278 types
    else:
        corpus_dir = write_tiny_corpus(tmp_path / "corpus", lines=3000, vocab=2000)
    ids = {threads: _id_of_fresh_build(corpus_dir, tmp_path / f"{threads}.npz", method, *args,
                                       OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
           for threads in ("1", "2", "4")}  # below, at and above the pinned count
    assert ids["1"] == ids["2"] == ids["4"]
