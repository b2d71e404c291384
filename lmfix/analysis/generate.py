"""Sample text from a trained run (its best checkpoint), word by word.

A body with a state is fed each new word once; one without (the Transformer) is fed
its last ``context`` words again for every new one.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmfix.analysis.evaluate import load_trained
from lmfix.data.vocab import EOS
from lmfix.training.config import ConfigError


@torch.no_grad()
def generate(
    run_dir: Path, words: int = 100, temperature: float = 1.0, seed: int | None = None, prompt: str = "",
    device: str = "auto", precision: str | None = None,
) -> str:
    """``words`` tokens sampled at ``temperature`` after ``prompt`` (default: a sentence start).

    Lines end where the model emits ``<eos>``; the prompt must use the corpus's tokens.
    """
    if not 0 < temperature < math.inf:
        raise ConfigError(f"--temperature must be a finite number > 0, got {temperature}")
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
    window = torch.tensor([[vocab.stoi[w]] for w in tokens], device=dev)
    window = window if context is None else window[-context:]
    state = model.init_state(1)
    out = prompt.split()
    for _ in range(words):
        logits, state = model.logits(window, state)
        probs = torch.softmax(logits[-1, 0].float() / temperature, dim=-1)
        word = torch.multinomial(probs, 1, generator=generator).view(1, 1)
        window = word if context is None else torch.cat([window, word])[-context:]
        out.append(vocab.itos[word.item()])
    if config.tokenizer == "spm":
        return "".join("\n" if w == EOS else w for w in out).replace("\u2581", " ").strip()
    return " ".join(out).replace(f" {EOS} ", "\n").replace(EOS, "\n").strip()
