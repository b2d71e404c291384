"""From a ``TrainConfig`` to its corpus and model: where a fixed E comes from.

A fixed E is never saved in checkpoints; a run records the artifact's id (a
content hash) and finds the same matrix again through the artifact file or the
embeddings cache, refusing a different one.
"""

from __future__ import annotations

from pathlib import Path

from lmfix.data.corpus import Corpus, load
from lmfix.model.language_model import LanguageModel
from lmfix.model.registry import make_head
from lmfix.training.config import ConfigError, TrainConfig
from lmfix.training.memory import require_model_memory


def load_corpus(config: TrainConfig) -> Corpus:
    """The prepared corpus a run trains on (prepared first if needed)."""
    from lmfix.data.tokenizers import TokenizerConfig

    # A word-level run ignores the sentencepiece fields: runs saved by an lmfix that did not refuse them still load.
    tok = TokenizerConfig(config.tokenizer, config.vocab_size or None, config.spm_type) \
        if config.tokenizer == "spm" else TokenizerConfig(config.tokenizer)
    return load(config.corpus, data_dir=config.data_dir or None, tokenizer=tok, verify=config.verify)


def check_vocabulary(run_dir: Path, trained_on: str, corpus: Corpus) -> None:
    """A run continues or is evaluated only on the vocabulary it was trained on."""
    if trained_on != corpus.vocab.fingerprint:
        raise ConfigError(f"the corpus vocabulary changed since {run_dir} was trained: restore the corpus (or, for "
                          "--tokenizer spm, the lmfix that trained it: sentencepiece text outside the model is "
                          "<spm-unk> since tokenizer version 2)")


def load_fixed_artifact(config: TrainConfig, corpus: Corpus, expected: dict | None = None):
    """The embedding artifact of a fixed run: ``--embeddings FILE`` or built/cached for ``--embed``."""
    from lmfix.embeddings import get_or_build, load_artifact

    if config.embeddings:
        art = load_artifact(config.embeddings, vocab=corpus.vocab)
        if config.embed != art.method:
            raise ConfigError(f"{config.embeddings} holds a {art.method} matrix; pass --embed {art.method} with it")
    else:
        art = get_or_build(config.embed, corpus, config.emsize, seed=config.embed_seed)
    if art.shape[1] != config.emsize:
        raise ConfigError(
            f"{art.path} has dimension {art.shape[1]} but --emsize is {config.emsize}: pass --emsize "
            f"{art.shape[1]} or build an artifact with dimension {config.emsize}"
        )
    if expected is not None and art.id != expected["id"]:
        raise ConfigError(
            f"the fixed matrix changed: {art.path} has id {art.id} but the run was trained with "
            f"{expected['id']} ({expected.get('path')}); restore that file"
        )
    return art


def build_model(config: TrainConfig, corpus: Corpus, expected: dict | None = None,
                training: bool = True) -> tuple[LanguageModel, dict | None]:
    """The model for ``config`` (weights freshly initialised from torch's current RNG) and, for a fixed E,
    a reference to its artifact (for checkpoints); refused first when it cannot fit (``training``: with its
    gradients, optimizer state and buffers)."""
    require_model_memory(config, len(corpus.vocab), len(corpus.train), training)
    art = load_fixed_artifact(config, corpus, expected) if config.fixed else None
    head = make_head(config.embed, len(corpus.vocab), config.emsize, art, alpha=config.alpha,
                     learn_alpha=not config.fix_alpha, normalize=config.normalize, head=config.head,
                     head_k=config.head_k, head_rank=config.head_rank)
    ref = None if art is None else {
        "method": art.method, "id": art.id, "path": str(Path(art.path).resolve()) if art.path else "",
        "vocab_fingerprint": art.vocab_fingerprint}
    return LanguageModel(head, config.model_config()), ref
