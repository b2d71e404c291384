"""The corpus stage: tokenization, the prepared cache and their errors (where the text comes from and its
checksums: test_corpus_sources.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lmfix.cli import main
from lmfix.data import sources
from lmfix.data.corpus import load, manifest_toml
from lmfix.data.sources import resolve
from lmfix.data.tokenizers import TokenizerConfig
from lmfix.data.vocab import EOS, UNK, Vocab
from lmfix.errors import CorpusError
from tests.conftest import write_tiny_corpus


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


def test_lines_end_at_newline_only(tiny_corpus_dir: Path):
    r"""One <eos> per "\n", as pytorch/examples reads a file; str.splitlines would also end lines at \x0c,
    \u2028, \x85, \x1e and the like (WikiText-2 has none of them, so its counts stay)."""
    test = tiny_corpus_dir / "test.txt"
    test.write_text(" a b \x0c c d \n e\u2028f \n g\x85h \r\n i\x1ej \n", encoding="utf-8", newline="")
    with open(test, encoding="utf-8") as f:
        expected = sum(len(line.split()) + 1 for line in f)
    c = load(str(tiny_corpus_dir))
    assert expected == 14 and (c.stats["tokens"]["test"], c.stats["lines"]["test"]) == (expected, 4)
    assert "lines = 4\ntokens = 14\n" in manifest_toml(resolve(str(tiny_corpus_dir))[1])


def test_vocab_file_keeps_pieces_that_splitlines_would_break(tmp_path: Path):
    vocab = Vocab(("<eos>", "a\x85b", "\u2028", "c\x0c"), (3, 2, 1, 0))  # sentencepiece pieces can hold these
    vocab.save(tmp_path / "vocab.txt")
    assert Vocab.load(tmp_path / "vocab.txt") == vocab


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


def test_a_cache_from_an_older_tokenization_is_prepared_again(tiny_corpus_dir: Path):
    """meta.json records the tokenizer's version: ids an older lmfix made (other lines, other types) are
    rebuilt, not reused."""
    meta_path = load(str(tiny_corpus_dir)).path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"].pop("version")  # what lmfix wrote before the version was recorded
    meta_path.write_text(json.dumps(meta))
    assert load(str(tiny_corpus_dir)).stats["from_cache"] is False
    assert load(str(tiny_corpus_dir)).stats["from_cache"] is True


def test_a_prepared_corpus_is_readable_by_others(tiny_corpus_dir: Path):
    """Caches may be shared: the prepared directory gets the umask's permissions like its files, not 0700."""
    mask = os.umask(0o022)
    try:
        c = load(str(tiny_corpus_dir))
    finally:
        os.umask(mask)
    assert c.path.stat().st_mode & 0o777 == 0o755
    assert (c.path / "train.npy").stat().st_mode & 0o777 == 0o644


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


def test_sentencepiece_text_outside_the_model_is_its_unknown_piece(tmp_path: Path):
    """A character too rare to get a piece is the model's <spm-unk> in every split: it is neither a type of its
    own (a row the model cannot produce) nor, in valid/test, WikiText's literal <unk>."""
    import sentencepiece as spm

    d = write_tiny_corpus(tmp_path / "rare", lines=400)
    for split, rare in (("train", "ж"), ("valid", "ѣ")):
        with open(d / f"{split}.txt", "a", encoding="utf-8") as f:
            f.write(f" w1 {rare} w2 \n")
    c = load(str(d), tokenizer=TokenizerConfig("spm", vocab_size=40))
    sp = spm.SentencePieceProcessor(model_file=str(c.path / "spm.model"))
    assert sp.piece_to_id("ж") == sp.unk_id()  # the case under test: the model has no piece for it
    assert set(c.vocab.itos) == {sp.id_to_piece(i) for i in range(sp.get_piece_size())} | {EOS}
    assert c.stats["oov"] == {"train": 0, "valid": 0, "test": 0}
    unknown = c.vocab.stoi["<spm-unk>"]
    assert c.vocab.counts[unknown] == 1 and c.vocab.counts[c.vocab.stoi[UNK]] == 0
    assert c.ids["valid"][-5:].tolist().count(unknown) == 1


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
    for settings in ({"vocab_size": 8000}, {"spm_type": "bpe"}):  # ignored, they would only split the cache
        with pytest.raises(CorpusError, match="are for --tokenizer spm"):
            TokenizerConfig("word", **settings)
    with pytest.raises(CorpusError, match="smaller --vocab-size"):
        load(str(tiny_corpus_dir), tokenizer=TokenizerConfig("spm", vocab_size=5000))
    assert not list(Path(sources.cache_root()).rglob("vocab.txt"))


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
        (["prepare", "{tiny}", "--vocab-size", "8000"], "--vocab-size and --spm-type are for --tokenizer spm"),
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


def test_a_word_run_saved_with_sentencepiece_settings_still_loads(tiny_corpus_dir: Path):
    """lmfix once ignored --vocab-size without --tokenizer spm and saved it: such a word run must resume."""
    from lmfix.training.config import TrainConfig
    from lmfix.training.setup import load_corpus

    saved = TrainConfig(corpus=str(tiny_corpus_dir), vocab_size=8000, spm_type="bpe")
    assert load_corpus(saved).vocab == load(str(tiny_corpus_dir)).vocab
