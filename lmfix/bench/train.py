"""``lmfix bench train``: training tokens/s of lmfix's models against a plain PyTorch LM of the same body.

All variants are timed in one process, round-robin (a few steps of each per
round), so load from other processes hits them alike; medians are reported.
``plain`` is pytorch/examples' model with nothing extra (nn.Embedding +
nn.LSTM, nn.GRU or nn.TransformerEncoder + tied nn.Linear, SGD with clipping);
the lmfix variants run ``Trainer.train_step``, i.e. exactly what ``lmfix train``
does per step.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmfix.data.batching import BPTTStream, batchify_split
from lmfix.model.registry import RECURRENT
from lmfix.model.transformer import sinusoidal
from lmfix.ops import gemm
from lmfix.ops.precision import cpu_name, resolve_precisions
from lmfix.training.config import ConfigError, TrainConfig
from lmfix.training.distributed import Dist, resolve_device
from lmfix.training.memory import require_model_memory
from lmfix.training.trainer import Trainer

VARIANTS = ("plain", "learned", "orthogonal", "hadamard")


@dataclass
class BenchTrainConfig:
    corpus: str = "wikitext-2"
    model: str = "lstm"  # the body of every variant, plain included
    emsize: int = 512
    nhid: int = 512
    nlayers: int = 2
    batch_size: int = 20
    bptt: int = 35
    rounds: int = 5
    steps: int = 4  # timed steps per variant per round
    warmup: int = 2
    variants: tuple[str, ...] = VARIANTS
    precisions: tuple[str, ...] = ("fp32",)  # each variant is timed in each (fp32, bf16)
    gemm: str | None = None  # backend of lmfix's dense heads ($LMFIX_GEMM when None); plain always uses F.linear
    device: str = "cpu"  # cpu, cuda, cuda:N (auto: cuda when there is one)
    profile: int = 0  # after the timing, this many steps of each variant under torch.profiler (0: none)


class PlainRNN(nn.Module):
    """pytorch/examples word_language_model's RNNModel (``rnn``: nn.LSTM or nn.GRU), tied, without dropout:
    the reference implementation."""

    def __init__(self, rnn: type[nn.RNNBase], vocab_size: int, emsize: int, nhid: int, nlayers: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emsize)
        self.rnn = rnn(emsize, nhid, nlayers)
        self.decoder = nn.Linear(nhid, vocab_size)
        self.decoder.weight = self.encoder.weight

    def forward(self, x: torch.Tensor, hidden):
        output, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(output), hidden


class PlainTransformer(nn.Module):
    """pytorch/examples' TransformerModel (nn.TransformerEncoder with a causal mask, sinusoidal positions),
    pre-LayerNorm like lmfix's, tied, without dropout."""

    def __init__(self, vocab_size: int, emsize: int, nhead: int, nhid: int, nlayers: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emsize)
        layer = nn.TransformerEncoderLayer(emsize, nhead, nhid, dropout=0.0, norm_first=True)
        self.body = nn.TransformerEncoder(layer, nlayers, norm=nn.LayerNorm(emsize), enable_nested_tensor=False)
        self.decoder = nn.Linear(emsize, vocab_size)
        self.decoder.weight = self.encoder.weight

    def forward(self, x: torch.Tensor, hidden: None):
        t, d = x.size(0), self.encoder.embedding_dim
        h = self.encoder(x) * math.sqrt(d) + sinusoidal(t, d, x.device)[:, None]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        return self.decoder(self.body(h, mask=mask, is_causal=True)), None


def _repackage(hidden):
    """pytorch/examples' repackage_hidden: detach nn.LSTM's (h, c) or nn.GRU's h; a Transformer's None stays."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return None if hidden is None else hidden.detach()


def _windows(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    stream = BPTTStream(data, bptt)
    while True:
        yield from stream


def _plain_stepper(base: TrainConfig, data: torch.Tensor, vocab_size: int, precision: str,
                   device: torch.device) -> Callable[[], int]:
    """pytorch/examples' step; in bf16 the forward and loss run under ``torch.autocast`` (plain AMP). Each step
    returns the tokens it trained on (an epoch's last window is shorter)."""
    if base.model == "transformer":
        model = PlainTransformer(vocab_size, base.emsize, base.nhead, base.nhid, base.nlayers)
    else:
        model = PlainRNN({"lstm": nn.LSTM, "gru": nn.GRU}[base.model], vocab_size, base.emsize, base.nhid, base.nlayers)
    model, data = model.to(device), data.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=20.0)
    windows = _windows(data, base.bptt)
    state = {"hidden": None}

    def step() -> int:
        x, y = next(windows)
        hidden = _repackage(state["hidden"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, state["hidden"] = model(x, hidden)
            loss = F.cross_entropy(logits.view(-1, vocab_size), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        return y.numel()

    return step


def _lmfix_stepper(config: TrainConfig, run_dir: Path, device: torch.device,
                   counts: dict | None = None, unfrozen: bool = False) -> Callable[[], int]:
    """``lmfix train``'s step (``Trainer.train_step``) of ``config``; each returns the tokens it trained on.
    ``counts``: filled with the model's parameter counts. ``unfrozen``: a ``--head unfreeze`` config's step
    after its switch (all of E learned)."""
    trainer = Trainer(config, run_dir, Dist(), device, lambda event: None)
    if unfrozen:
        trainer.unfreeze()
    if counts is not None:
        counts.update(trainer.model.counts().to_dict())
    trainer.state = trainer.model.init_state(config.batch_size)
    windows = _windows(trainer.stream.data, config.bptt)

    def step() -> int:
        x, y = next(windows)
        trainer.train_step(x, y)
        return y.numel()

    return step


def bench_train(cfg: BenchTrainConfig, progress: Callable[[str], None] = lambda line: None) -> dict:
    """Median training tokens/s per variant and the ratios the speed targets are stated in."""
    unknown = sorted(set(cfg.variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown bench variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if "plain" in cfg.variants and cfg.model in RECURRENT and cfg.nhid != cfg.emsize:
        raise ConfigError(f"plain ties its decoder to the embedding, as pytorch/examples does: it needs --nhid equal "
                          f"to --emsize (got {cfg.nhid} and {cfg.emsize}); set them equal or leave plain out of "
                          "--variants")
    # every variant's settings, checked (--model, sizes) before anything loads; no dropout, as plain
    base = TrainConfig(corpus=cfg.corpus, model=cfg.model, emsize=cfg.emsize, nhid=cfg.nhid, nlayers=cfg.nlayers,
                       dropout=0.0, dropouth=0.0, dropouti=0.0, batch_size=cfg.batch_size, bptt=cfg.bptt,
                       device=cfg.device)
    device = resolve_device(cfg.device)
    backend = gemm.resolve(cfg.gemm or gemm.configured())  # checked before the corpus is loaded
    precisions = resolve_precisions(cfg.precisions, device)
    from lmfix.training.setup import load_corpus

    corpus = load_corpus(base)
    vocab_size = len(corpus.vocab)
    require_model_memory(base, vocab_size, len(corpus.train))  # plain's model too, which no Trainer checks
    data = batchify_split(corpus.train, cfg.batch_size, "train", "lower --batch-size")
    if cfg.bptt > data.size(0) - 1:  # every window would be cut short: a step of fewer tokens than reported
        raise ConfigError(f"--bptt {cfg.bptt} is longer than the training text of each of the {cfg.batch_size} "
                          f"sequences ({data.size(0) - 1:,} tokens); lower --bptt or --batch-size")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="lmfix-bench-") as tmp, gemm.use(backend):
        steppers = {}
        for name in cfg.variants:
            for precision in precisions:
                key = _key(name, precision)
                progress(f"building {key}")
                if name == "plain":
                    steppers[key] = _plain_stepper(base, data, vocab_size, precision, device)
                else:
                    config = replace(base, embed=name, precision=precision)
                    steppers[key] = _lmfix_stepper(config, Path(tmp), device)
        results = _round_robin(steppers, cfg.rounds, cfg.steps, cfg.warmup, device, progress)
        profiles = {name: _profile(step, cfg.profile, device) for name, step in steppers.items()} if cfg.profile else {}
    tokens = cfg.batch_size * cfg.bptt
    speed = {name: r["median_tok_s"] for name, r in results.items()}
    ratios = {}
    for precision in precisions:
        pairs = [("learned", "plain")] + [(fixed, "learned") for fixed in ("orthogonal", "hadamard")]
        for fast, base in pairs:
            if _key(fast, precision) in speed and _key(base, precision) in speed:
                ratios[f"{_key(fast, precision)} / {_key(base, precision)}"] = (
                    speed[_key(fast, precision)] / speed[_key(base, precision)])
    for name in cfg.variants:
        for precision in (p for p in precisions if p != "fp32" and "fp32" in precisions):
            ratios[f"{_key(name, precision)} / {name} fp32"] = speed[_key(name, precision)] / speed[name]
    return {
        "config": asdict(cfg), "corpus": corpus.name, "vocab_size": vocab_size, "tokens_per_step": tokens,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "gemm": backend, "device": str(device),
        "variants": results, "ratios": ratios, "profile": profiles,
    }


def _round_robin(steppers: dict[str, Callable[[], int]], rounds: int, steps: int, warmup: int,
                 device: torch.device, progress: Callable[[str], None]) -> dict[str, dict]:
    """Time ``steps`` steps of each stepper per round, ``rounds`` times (load from other processes hits them
    alike), after ``warmup`` steps each: per stepper the median tok/s and step time."""
    for step in steppers.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in steppers}  # (seconds, tokens)
    # a GPU runs ahead of Python: wait for its queue before each clock read
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for r in range(rounds):
        for name, step in steppers.items():
            for _ in range(steps):
                sync()
                start = time.perf_counter()
                tokens = step()
                sync()
                samples[name].append((time.perf_counter() - start, tokens))
        progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {_tok_s(s):,.0f} tok/s" for n, s in samples.items()))
    return {
        name: {"median_tok_s": _tok_s(s), "median_step_ms": 1000 * statistics.median(t for t, _ in s),
               "min_step_ms": 1000 * min(t for t, _ in s), "max_step_ms": 1000 * max(t for t, _ in s),
               "steps": len(s), "tokens": sum(n for _, n in s)}
        for name, s in samples.items()
    }


def bench_configs(configs: dict[str, TrainConfig], rounds: int = 3, steps: int = 4, warmup: int = 2,
                  progress: Callable[[str], None] = lambda line: None) -> dict:
    """Step time of each named training config (a recipe's variants: ``lmfix bench recipe``), each exactly as
    ``lmfix train`` steps it (its own dropout, head and precision), timed round-robin in one process, with
    its trained and stored parameters. A ``--head unfreeze`` config steps at two speeds, the frozen head's
    before its switch (under ``variants``) and a learned E's after it (under ``after_unfreeze``): both are
    timed."""
    devices = {resolve_device(c.device) for c in configs.values()}
    if len(devices) != 1:
        raise ConfigError("the configs to time run on different devices; time them on one")
    device = devices.pop()
    two_speed = [name for name, config in configs.items() if config.head == "unfreeze"]
    counts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lmfix-bench-") as tmp:
        steppers = {}
        for name, config in configs.items():
            progress(f"building {name}")
            steppers[name] = _lmfix_stepper(config, Path(tmp) / name, device, counts.setdefault(name, {}))
            if name in two_speed:
                after = unfrozen_name(name)
                steppers[after] = _lmfix_stepper(config, Path(tmp) / after, device, counts.setdefault(after, {}),
                                                 unfrozen=True)
        results = _round_robin(steppers, rounds, steps, warmup, device, progress)
    for name, result in results.items():
        result["params"] = counts[name]
    after_unfreeze = {name: results.pop(unfrozen_name(name)) for name in two_speed}
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device), "cpu": processor,
            "date": time.strftime("%Y-%m-%d"), "rounds": rounds, "steps": steps, "variants": results,
            "after_unfreeze": after_unfreeze}


def unfrozen_name(name: str) -> str:
    """How a ``--head unfreeze`` variant's step after its switch is named in progress lines and tables."""
    return f"{name}, unfrozen"


def _profile(step: Callable[[], int], steps: int, device: torch.device) -> dict:
    """Where a step's time goes: every op's self time (ms per step; device time on CUDA), most first, by
    torch.profiler, and their sum. Profiling slows ops a little: compare ops, not these totals."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    own = [(e.key, (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000 / steps)
           for e in prof.key_averages()]
    own.sort(key=lambda item: item[1], reverse=True)
    return {"steps": steps, "total_ms": sum(ms for _, ms in own), "ops": [[name, ms] for name, ms in own]}


def _key(variant: str, precision: str) -> str:
    """Row name: the variant, with the precision when it is not fp32 (``learned bf16``)."""
    return variant if precision == "fp32" else f"{variant} {precision}"


def _tok_s(samples: list[tuple[float, int]]) -> float:
    """The median step's rate, of the tokens each step really trained on."""
    return statistics.median(tokens / seconds for seconds, tokens in samples)
