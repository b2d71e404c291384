"""Where a corpus's text comes from (a --data-dir, $LMFIX_CORPORA, the cache, the hub, gensim's test data),
its checksums, and when ids prepared before may stand in for text that is gone."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from lmfix.data import sources
from lmfix.data.corpus import load, manifest_toml
from lmfix.data.sources import CorpusNotFoundError, resolve
from lmfix.errors import CorpusError


@pytest.fixture
def fake_manifest(tmp_path: Path, monkeypatch, tiny_corpus_dir: Path) -> Path:
    """A manifest 'toy' whose checksums match ``tiny_corpus_dir``, in a private manifest dir."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    files = resolve(str(tiny_corpus_dir))[1]
    header = (
        'name = "toy"\n[hub]\nid = "someone/toy"\nconfig = "toy-v1"\ntext_field = "text"\n'
        'splits = { train = "train", valid = "validation", test = "test" }\n\n'
    )
    (mdir / "toy.toml").write_text(header + manifest_toml(files))
    monkeypatch.setattr(sources, "MANIFEST_DIR", mdir)
    monkeypatch.delenv("LMFIX_CORPORA", raising=False)
    return tiny_corpus_dir


# --------------------------------------------------------------------------- finding the text


def test_known_corpus_resolution_order(fake_manifest: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "shared"
    shutil.copytree(fake_manifest, root / "toy")
    monkeypatch.setenv("LMFIX_CORPORA", str(root))
    assert resolve("toy")[1]["train"] == root / "toy" / "train.txt"
    assert resolve("toy", data_dir=fake_manifest)[1]["train"] == fake_manifest / "train.txt"


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_data_dir_is_the_only_place_looked(fake_manifest: Path, tmp_path: Path, monkeypatch, state: str):
    """A mistyped or empty --data-dir is an error naming it and the files it needs, not a quiet switch to
    $LMFIX_CORPORA, the cache, gensim or the hub."""
    root = tmp_path / "shared"
    shutil.copytree(fake_manifest, root / "toy")
    monkeypatch.setenv("LMFIX_CORPORA", str(root))
    data_dir = tmp_path / "mistyped"
    if state == "empty":
        data_dir.mkdir()
    message = re.escape(f"--data-dir {data_dir} ") + r".*train\.txt.*valid\.txt.*test\.txt"
    for corpus in ("toy", str(fake_manifest)):
        with pytest.raises(CorpusError, match=message):
            load(corpus, data_dir=data_dir)


def test_a_missing_split_is_an_error_not_a_reason_to_use_the_prepared_cache(fake_manifest: Path, tmp_path: Path,
                                                                             monkeypatch):
    """Only text that is nowhere lets a prepared cache stand in: a copy that lacks a split is an error, or
    the old ids would quietly replace what the user pointed at."""
    load("toy", data_dir=fake_manifest)
    partial = tmp_path / "shared" / "toy"
    partial.mkdir(parents=True)
    shutil.copy(fake_manifest / "train.txt", partial)
    with pytest.raises(CorpusError, match=re.escape(f"{partial} has no valid split")):
        load("toy", data_dir=partial)
    monkeypatch.setenv("LMFIX_CORPORA", str(partial.parent))
    with pytest.raises(CorpusError, match=re.escape(f"{partial} has no valid split")):
        load("toy")


def test_offline_and_not_found_says_where_it_looked(fake_manifest: Path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/toy' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: None)
    with pytest.raises(CorpusError) as err:
        load("toy")
    msg = str(err.value)
    assert "--data-dir" in msg and "LMFIX_CORPORA" in msg and "someone/toy" in msg
    assert "\n" not in msg
    assert not (sources.cache_root() / "toy").exists()


def test_offline_is_detected_without_waiting_for_retries(monkeypatch):
    def no_dns(host, port, *args, **kwargs):  # what a machine without a resolver answers, on any machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources.socket, "getaddrinfo", no_dns)
    assert sources.hub_offline_reason() == "offline: cannot resolve no-such-host.invalid"


def test_prepared_known_corpus_loads_without_its_text(fake_manifest: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "shared"
    shutil.copytree(fake_manifest, root / "toy")
    monkeypatch.setenv("LMFIX_CORPORA", str(root))
    first = load("toy")
    shutil.rmtree(root / "toy")
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: "offline: cannot resolve huggingface.co")
    with pytest.warns(UserWarning, match="using the prepared cache"):
        again = load("toy")
    assert again.vocab == first.vocab and np.array_equal(again.ids["train"], first.ids["train"])


def test_a_prepared_cache_stands_in_only_for_the_same_settings(fake_manifest: Path, tmp_path: Path, monkeypatch):
    """Without the text nothing can be checked again: a cache made with --no-verify does not stand in when
    verifying, nor one an older lmfix made."""
    root = tmp_path / "shared"
    shutil.copytree(fake_manifest, root / "toy")
    with open(root / "toy" / "test.txt", "a") as f:
        f.write(" w1 extra\n")
    monkeypatch.setenv("LMFIX_CORPORA", str(root))
    with pytest.warns(UserWarning, match="accepted because of --no-verify"):
        made = load("toy", verify=False)
    shutil.rmtree(root / "toy")
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: "offline: cannot resolve huggingface.co")
    with pytest.raises(CorpusNotFoundError, match="cannot stand in: its test text was not verified"):
        load("toy")
    with pytest.warns(UserWarning, match="using the prepared cache"):
        assert load("toy", verify=False).vocab == made.vocab
    meta = json.loads((made.path / "meta.json").read_text())
    meta["tokenizer"].pop("version")  # as lmfix wrote it before the version was recorded
    (made.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorpusNotFoundError, match="cannot stand in: it was made .* by an older lmfix"):
        load("toy", verify=False)


# --------------------------------------------------------------------------- fetching into the cache


def _stand_in_hub(directory: Path):
    """A local stand-in for the hub: a real DatasetDict with one record per line, hub-style.

    The hub's records differ from the files in whitespace (blank lines are ''),
    which the whitespace-normalised checksum accepts.
    """
    import datasets

    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        parts = {}
        for split, hub_split in (("train", "train"), ("valid", "validation"), ("test", "test")):
            lines = (directory / f"{split}.txt").read_text().splitlines()
            parts[hub_split] = datasets.Dataset.from_dict({"text": [ln + "\n" if ln.strip() else "" for ln in lines]})
        return datasets.DatasetDict(parts)

    return load_dataset, calls


def test_hub_download_into_cache(fake_manifest: Path, monkeypatch):
    import datasets

    stand_in, calls = _stand_in_hub(fake_manifest)
    monkeypatch.setattr(datasets, "load_dataset", stand_in)
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: None)
    c = load("toy")
    assert calls == [("someone/toy", "toy-v1")]
    cached = sources.cache_root() / "toy" / "train.txt"
    assert cached.is_file()
    expected = load(str(fake_manifest))
    assert c.stats["tokens"] == expected.stats["tokens"]
    assert c.vocab == expected.vocab
    # Offline now: the cached copy is used, no second hub call.
    assert load("toy").stats["from_cache"] is True and len(calls) == 1


def test_gensim_lee_smoke_corpus_is_cut_from_gensim_test_data():
    c = load("gensim-lee")
    assert c.stats["tokens"] == {"train": 60190, "valid": 2151, "test": 1882}
    # lee.cor is Latin-1 in gensim; the cached split is UTF-8 with the accents intact.
    cut = (sources.cache_root() / "gensim-lee" / "valid.txt").read_text(encoding="utf-8")
    cut += (sources.cache_root() / "gensim-lee" / "test.txt").read_text(encoding="utf-8")
    assert not cut.isascii()
    assert c.vocab.unk_id is not None  # valid/test words unseen in train map to <unk>


@pytest.mark.parametrize("corpus", ["toy", "gensim-lee"])  # fetched from the (stand-in) hub, cut from gensim's data
def test_fetching_keeps_what_lmfix_did_not_write(fake_manifest: Path, monkeypatch, corpus: str):
    """A fetch writes its split files into the cache's NAME/ one by one: a user's notes and the prepared
    corpora of other tokenizers there stay (lmfix deletes only what it wrote)."""
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _stand_in_hub(fake_manifest)[0])
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: None)
    shutil.copy(sources.PACKAGE_ROOT / "corpora" / "gensim-lee.toml", sources.MANIFEST_DIR)
    dest = sources.cache_root() / corpus
    kept = {dest / "MY_NOTES.txt": "user data", dest / "prepared" / "spm-unigram-8000" / "spm.model": "a model"}
    for path, text in kept.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert load(corpus).stats["verified"] == ["train", "valid", "test"]
    assert {path: path.is_file() and path.read_text() for path in kept} == kept


def test_a_fetch_killed_between_its_files_is_fetched_again(fake_manifest: Path, monkeypatch):
    """Split files appear one by one: a cache with some of them is an interrupted fetch, not a user's
    corpus missing a split, and is fetched again."""
    shutil.copy(sources.PACKAGE_ROOT / "corpora" / "gensim-lee.toml", sources.MANIFEST_DIR)
    dest = sources.cache_root() / "gensim-lee"
    dest.mkdir(parents=True)
    (dest / "valid.txt").write_text("a half-written fetch\n")
    assert load("gensim-lee").stats["tokens"] == {"train": 60190, "valid": 2151, "test": 1882}


# --------------------------------------------------------------------------- verification


def test_checksum_mismatch_is_an_error_unless_no_verify(fake_manifest: Path):
    """A cache prepared with --no-verify records which splits matched: it is not reused as verified."""
    assert load("toy", data_dir=fake_manifest).stats["verified"] == ["train", "valid", "test"]
    with open(fake_manifest / "test.txt", "a") as f:
        f.write(" w1 extra\n")
    with pytest.raises(CorpusError, match="checksum mismatch.*--no-verify"):
        load("toy", data_dir=fake_manifest)
    with pytest.warns(UserWarning, match="accepted because of --no-verify"):
        c = load("toy", data_dir=fake_manifest, verify=False)
    assert c.stats["tokens"]["test"] > 0 and c.stats["verified"] == ["train", "valid"]
    with pytest.raises(CorpusError, match="checksum mismatch.*--no-verify"):
        load("toy", data_dir=fake_manifest)
    assert load("toy", data_dir=fake_manifest, verify=False).stats["from_cache"] is True


def test_a_tokenizer_that_no_longer_matches_the_manifests_counts_is_an_error(fake_manifest: Path):
    """Verified files must tokenize to the manifest's counts (one <eos> per line): else lmfix's word
    tokenizer drifted and perplexities would not compare with published ones."""
    assert load("toy", data_dir=fake_manifest).stats["tokens"]["train"] > 0  # the fixture's counts agree
    manifest = sources.MANIFEST_DIR / "toy.toml"
    text = manifest.read_text()
    train_tokens = int(text.split("tokens = ", 1)[1].split()[0])
    manifest.write_text(text.replace(f"tokens = {train_tokens}", f"tokens = {train_tokens + 1}", 1))
    with pytest.raises(CorpusError, match=rf"tokenizing gave {train_tokens:,} train tokens where its manifest "
                                          rf"counts {train_tokens + 1:,}"):
        load("toy", data_dir=fake_manifest, force=True)
