"""Sample text from a trained run (its best checkpoint), word by word.

A body with a state is fed each new word once; one without (the Transformer) is fed
its last ``context`` words again for every new one. Text comes out piece by piece as it
is sampled (``sample``), so ``lmfix generate --words 1000000000 | head`` prints at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import torch

from lmfix.analysis.evaluate import load_trained
from lmfix.data.vocab import EOS
from lmfix.training.config import ConfigError

FLOAT32_MAX = torch.finfo(torch.float32).max
# The probabilities are softmax((logits - max) * (1 / T)) in float32: below this 1/T is inf, and they NaN.
MIN_TEMPERATURE = 1 / FLOAT32_MAX
# torch.Generator.manual_seed's range (a negative seed counts from 2**64).
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_sampling(temperature: float, seed: int | None) -> None:
    """A temperature and seed the sampler can use, checked before the model loads."""
    if not MIN_TEMPERATURE <= temperature < math.inf:
        raise ConfigError(f"--temperature must be a finite number >= {MIN_TEMPERATURE:.3g} (below, 1/T overflows "
                          f"float32; 0.01 already samples nearly always the likeliest word), got {temperature}")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"--seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (torch's seeds), got {seed}")


@torch.no_grad()
def sample(
    run_dir: Path, words: int = 100, temperature: float = 1.0, seed: int | None = None, prompt: str = "",
    device: str = "auto", precision: str | None = None,
) -> Iterator[str]:
    """The prompt (default: none, after a sentence start), then ``words`` tokens sampled at ``temperature``, as
    pieces of text in the order they are made; a line ends (a piece ``"\\n"``) where the model emits ``<eos>``.
    The prompt must use the corpus's tokens."""
    check_sampling(temperature, seed)
    model, config, corpus, _ = load_trained(run_dir, device, precision)
    vocab = corpus.vocab
    tokens = prompt.split() or [EOS]
    unknown = [w for w in tokens if w not in vocab.stoi]
    if unknown:
        raise ConfigError(f"prompt word {unknown[0]!r} is not in the vocabulary of {run_dir}; use corpus tokens")
    dev = model.head.bias.device
    generator = torch.Generator(dev)
    generator.manual_seed(seed if seed is not None else torch.seed())
    context = model.body.context
    start = torch.tensor([[vocab.stoi[w]] for w in tokens], device=dev)
    inverse = 1 / temperature  # a float32 number (check_sampling): the likeliest word's score stays 0, not NaN

    def sampled() -> Iterator[str]:
        window = start if context is None else start[-context:]
        state = model.init_state(1)
        for _ in range(words):
            logits, state = model.logits(window, state)
            last = logits[-1, 0].float()
            probs = torch.softmax((last - last.max()) * inverse, dim=-1)
            word = torch.multinomial(probs, 1, generator=generator).view(1, 1)
            window = word if context is None else torch.cat([window, word])[-context:]
            yield vocab.itos[word.item()]

    yield from _pieces(chain(prompt.split(), sampled()), spm=config.tokenizer == "spm")


def _pieces(tokens: Iterable[str], spm: bool) -> Iterator[str]:
    """Printable text of ``tokens``: words apart by a space (sentencepiece: joined, \u2581 a space), ``<eos>`` a
    line end ("\n" alone, so that a caller can flush there), no space at the start of a line."""
    line_start = True
    for token in tokens:
        if token == EOS:
            line_start = True
            yield "\n"
            continue
        text = token.replace("\u2581", " ") if spm else " " + token
        text = text.lstrip(" ") if line_start else text
        if text:
            line_start = False
            yield text


def generate(
    run_dir: Path, words: int = 100, temperature: float = 1.0, seed: int | None = None, prompt: str = "",
    device: str = "auto", precision: str | None = None,
) -> str:
    """All of ``sample``'s text in one string (no line breaks at its ends)."""
    return "".join(sample(run_dir, words, temperature, seed, prompt, device, precision)).strip("\n")
