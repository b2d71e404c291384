"""The corpus stage: resolution, verification, tokenization, caching and its errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from lmfix.cli import main
from lmfix.data import sources
from lmfix.data.corpus import load, manifest_toml
from lmfix.data.sources import resolve
from lmfix.data.tokenizers import TokenizerConfig
from lmfix.data.vocab import EOS, Vocab
from lmfix.errors import CorpusError


def test_word_tokenization_counts_eos_per_line_including_empty(tiny_corpus_dir: Path):
    c = load(str(tiny_corpus_dir))
    for split in ("train", "valid", "test"):
        lines = (tiny_corpus_dir / f"{split}.txt").read_text().splitlines()
        assert c.stats["tokens"][split] == sum(len(line.split()) + 1 for line in lines)
        assert c.stats["lines"][split] == len(lines)
        assert int((c.ids[split] == c.vocab.eos_id).sum()) == len(lines)
    # Decoding the ids gives back the text, line by line.
    first = (tiny_corpus_dir / "train.txt").read_text().splitlines()[:20]
    assert [line[:-1] for line in c.lines("train")[:20]] == [line.split() for line in first]


def test_vocab_is_frequency_sorted_and_stable(tiny_corpus_dir: Path):
    c = load(str(tiny_corpus_dir))
    counts = list(c.vocab.counts)
    assert counts == sorted(counts, reverse=True)
    tokens = [w for line in c.lines("train") for w in line]
    assert sum(counts) == len(tokens)
    # Ties keep first occurrence: rebuilding from the same stream gives the same order.
    assert Vocab.from_tokens(tokens).itos == c.vocab.itos
    assert Vocab.load(c.path / "vocab.txt") == c.vocab


def test_second_load_reads_the_cache(tiny_corpus_dir: Path):
    first = load(str(tiny_corpus_dir))
    assert first.stats["from_cache"] is False
    second = load(str(tiny_corpus_dir))
    assert second.stats["from_cache"] is True
    assert second.vocab.fingerprint == first.vocab.fingerprint
    assert np.array_equal(second.ids["test"], first.ids["test"])
    # Editing a source invalidates the cache.
    with open(tiny_corpus_dir / "valid.txt", "a") as f:
        f.write(" w1 w2\n")
    third = load(str(tiny_corpus_dir))
    assert third.stats["from_cache"] is False
    assert third.stats["tokens"]["valid"] == first.stats["tokens"]["valid"] + 3


def test_wikitext_file_names_and_oov_map_to_unk(tmp_path: Path):
    d = tmp_path / "wt"
    d.mkdir()
    (d / "wiki.train.tokens").write_text(" a b c\n a b\n")
    (d / "wiki.valid.tokens").write_text(" a zzz\n")
    (d / "wiki.test.tokens").write_text(" b yyy xxx\n")
    c = load(str(d))
    assert c.stats["oov"] == {"train": 0, "valid": 1, "test": 2}
    assert c.vocab.unk_id is not None and c.vocab.counts[c.vocab.unk_id] == 0
    assert c.ids["test"].tolist() == [c.vocab.stoi["b"], c.vocab.unk_id, c.vocab.unk_id, c.vocab.eos_id]


def test_sentencepiece_tokenizer(tiny_corpus_dir: Path):
    tok = TokenizerConfig("spm", vocab_size=40, spm_type="bpe")
    c = load(str(tiny_corpus_dir), tokenizer=tok)
    assert (c.path / "spm.model").is_file()
    assert c.path.name == "spm-bpe-40"
    # Every model piece has a row, plus <eos>; each line ends in <eos>.
    assert len(c.vocab) == 41
    assert EOS in c.vocab.stoi
    lines = (tiny_corpus_dir / "train.txt").read_text().splitlines()
    assert c.stats["lines"]["train"] == len(lines)
    assert load(str(tiny_corpus_dir), tokenizer=tok).stats["from_cache"] is True


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "test.txt").unlink(), "has no test split"),
        (lambda d: (d / "valid.txt").write_text("\n \n"), "valid split"),
        (lambda d: (d / "train.txt").write_bytes(b"caf\xe9 au lait\n"), "not UTF-8"),
    ],
)
def test_bad_corpus_directories(tiny_corpus_dir: Path, setup, message: str):
    setup(tiny_corpus_dir)
    with pytest.raises(CorpusError, match=message):
        load(str(tiny_corpus_dir))
    # Nothing half-written in the cache.
    assert not list(Path(sources.cache_root()).rglob("*.npy"))


def test_bad_tokenizer_settings(tiny_corpus_dir: Path):
    with pytest.raises(CorpusError, match="unknown tokenizer"):
        TokenizerConfig("chars")
    with pytest.raises(CorpusError, match="--vocab-size"):
        TokenizerConfig("spm")
    with pytest.raises(CorpusError, match="smaller --vocab-size"):
        load(str(tiny_corpus_dir), tokenizer=TokenizerConfig("spm", vocab_size=5000))
    assert not list(Path(sources.cache_root()).rglob("vocab.txt"))


# --------------------------------------------------------------------------- manifests and the hub


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


def test_known_corpus_resolution_order(fake_manifest: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "shared"
    shutil.copytree(fake_manifest, root / "toy")
    monkeypatch.setenv("LMFIX_CORPORA", str(root))
    assert resolve("toy")[1]["train"] == root / "toy" / "train.txt"
    assert resolve("toy", data_dir=fake_manifest)[1]["train"] == fake_manifest / "train.txt"


def test_checksum_mismatch_is_an_error_unless_no_verify(fake_manifest: Path):
    with open(fake_manifest / "test.txt", "a") as f:
        f.write(" w1 extra\n")
    with pytest.raises(CorpusError, match="checksum mismatch.*--no-verify"):
        load("toy", data_dir=fake_manifest)
    with pytest.warns(UserWarning, match="accepted because of --no-verify"):
        c = load("toy", data_dir=fake_manifest, verify=False)
    assert c.stats["tokens"]["test"] > 0


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


# --------------------------------------------------------------------------- CLI


def test_cli_prepare_prints_summary(tiny_corpus_dir: Path, capsys):
    assert main(["prepare", str(tiny_corpus_dir)]) == 0
    out = capsys.readouterr().out
    c = load(str(tiny_corpus_dir))
    assert f"{c.stats['tokens']['train']:,} tokens" in out
    assert f"{len(c.vocab):,} types" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "no-such-corpus"], "not found"),
        (["prepare", "{tiny}", "--tokenizer", "chars"], "unknown tokenizer"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tiny_corpus_dir: Path, capsys, argv, message):
    argv = [a.replace("{tiny}", str(tiny_corpus_dir)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmfix: error:") and message in err
    assert len(err.splitlines()) == 1


def test_cli_rejects_bad_flag_values(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "x", "--vocab-size", "-3"])
    assert exc.value.code == 2


def test_print_manifest_matches_shipped_wikitext2(wikitext2_dir: Path, capsys):
    assert main(["prepare", str(wikitext2_dir), "--print-manifest"]) == 0
    out = capsys.readouterr().out
    shipped = (sources.MANIFEST_DIR / "wikitext-2.toml").read_text().splitlines()
    printed = [line for line in out.splitlines() if line.startswith(("sha256", "tokens_sha256", "lines", "tokens"))]
    assert len(printed) == 12 and all(line in shipped for line in printed)  # 3 splits x 4 keys


# --------------------------------------------------------------------------- real WikiText-2


@pytest.mark.integration
def test_wikitext2_counts(wikitext2_dir: Path, monkeypatch, capsys):
    monkeypatch.setenv("LMFIX_CORPORA", str(wikitext2_dir.parent))
    assert main(["prepare", "wikitext-2"]) == 0
    out = capsys.readouterr().out
    for text in ("2,088,628 tokens", "217,646 tokens", "245,569 tokens", "33,278 types"):
        assert text in out
    c = load("wikitext-2")
    assert c.stats["from_cache"] is True
    assert c.vocab.itos[:3] == ("the", ",", ".")
    assert c.stats["oov"] == {"train": 0, "valid": 0, "test": 0}
    meta = json.loads((c.path / "meta.json").read_text())
    assert meta["sources"]["train"]["size"] == 10_797_148
    assert hashlib.sha256((wikitext2_dir / "train.txt").read_bytes()).hexdigest().startswith("9e9fa1ad")



def test_gensim_lee_smoke_corpus_is_cut_from_gensim_test_data():
    c = load("gensim-lee")
    assert c.stats["tokens"] == {"train": 60190, "valid": 2151, "test": 1882}
    # lee.cor is Latin-1 in gensim; the cached split is UTF-8 with the accents intact.
    cut = (sources.cache_root() / "gensim-lee" / "valid.txt").read_text(encoding="utf-8")
    cut += (sources.cache_root() / "gensim-lee" / "test.txt").read_text(encoding="utf-8")
    assert not cut.isascii()
    assert c.vocab.unk_id is not None  # valid/test words unseen in train map to <unk>


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
