"""``TrainConfig``: every training flag in one dataclass, saved as ``config.toml`` in the run.

A recipe, the CLI and a resumed run all produce the same object. Values are
plain str/int/float/bool so the TOML is flat and readable; "unset" is ``""``
or ``0`` (TOML has no null). ``lr = 0`` resolves to the optimizer's usual value.
No torch import here, so the CLI can build its parser quickly.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from lmfix import atomic
from lmfix.errors import LmfixError
from lmfix.model.config import POSITIONS, ModelConfig
from lmfix.model.registry import BODIES, EMBEDS, FIXED, HEADS, LEARNED, RECURRENT

OPTIMIZERS = ("sgd", "asgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16", "auto")
DEFAULT_LR = {"sgd": 20.0, "asgd": 30.0, "adam": 1e-3, "adamw": 1e-3}
CONFIG_FILE = "config.toml"
# The weights and the optimizer's steps are float32 (bf16 has the same range): a setting they are multiplied by
# beyond it makes the first step inf.
FLOAT32_MAX = 3.4028234663852886e38
SCALES = ("lr", "alpha", "weight_decay")
# config.toml holds TOML integers, which are 64-bit; seeds are numpy's too, which takes none below 0.
INT_MAX = 2**63 - 1
SEEDS = ("seed", "embed_seed")
HEAD_OPTIONS = {"head_k": "top-k", "head_rank": "low-rank", "unfreeze_at": "unfreeze"}  # each --head's own number
# Fields a resumed run may change: how long and where it runs, how often it reports.
RESUMABLE = frozenset({"epochs", "max_tokens", "time_budget", "device", "verify", "log_interval",
                       "checkpoint_interval"})


HELP = {
    "corpus": "prepared corpus name or directory (see lmfix prepare)",
    "data_dir": "directory holding train/valid/test text (overrides lookup)",
    "tokenizer": "word or spm (sentencepiece)",
    "vocab_size": "sentencepiece vocabulary size",
    "spm_type": "sentencepiece model: unigram or bpe",
    "verify": "check the corpus checksums",
    "embed": f"the matrix E: {', '.join(EMBEDS)}",
    "embeddings": "a fixed E from an artifact file (lmfix build-embeddings); --embed defaults to its method",
    "embed_seed": "seed of the artifact built for a fixed --embed",
    "alpha": "initial scale of a fixed classifier's logits (alpha * E x_hat + b)",
    "fix_alpha": "keep alpha at its initial value (not learned)",
    "normalize": "normalize x before a fixed classifier (x_hat = x / ||x||)",
    "head": f"what a fixed matrix trains: {', '.join(HEADS)} (nearly-fixed heads: see lmfix/model/nearly_fixed.py)",
    "head_k": "--head top-k: learn the rows of the K most frequent words",
    "head_rank": "--head low-rank: rank r of the learned correction E0 + A B^T",
    "unfreeze_at": "--head unfreeze: share of the training budget (tokens) after which all of E is learned, e.g. 0.5",
    "model": f"the body: {', '.join(BODIES)}",
    "emsize": "size of E's rows (word vectors) and of the body's output",
    "nhid": "lstm, gru: hidden units of the layers below the last; transformer: feed-forward width",
    "nlayers": "layers of the body",
    "nhead": f"transformer: attention heads, a divisor of --emsize (default: {ModelConfig.nhead})",
    "positions": f"transformer: {' or '.join(POSITIONS)} positions (default: {POSITIONS[0]}; learned: --bptt of them)",
    "dropout": "locked dropout on the body's output",
    "dropouth": "dropout inside the body: locked between lstm/gru layers, on the transformer's attention and "
                "residual branches",
    "dropouti": "locked dropout on the input embeddings",
    "dropoute": "embedding dropout: drop whole words from E",
    "wdrop": "lstm, gru: DropConnect on the hidden-to-hidden weights",
    "optimizer": f"one of {', '.join(OPTIMIZERS)} (asgd: SGD, then averaging when validation stalls)",
    "lr": "learning rate (default 20 for sgd, 30 for asgd, 1e-3 for adam/adamw; under adam/adamw a fixed head's "
          "alpha steps at lr x |--alpha|)",
    "lr_decay": "divide lr by this when validation does not improve (sgd, adam, adamw)",
    "nonmono": "asgd: validations without improvement before averaging starts",
    "clip": "max gradient norm (0: no clipping)",
    "weight_decay": "weight decay on every trainable parameter, alpha included",
    "batch_size": "sequences per batch (per process under torchrun)",
    "eval_batch_size": "batch size for validation during training",
    "bptt": "sequence length",
    "variable_bptt": "AWD-LSTM random sequence lengths around --bptt (not with learned positions)",
    "epochs": "passes over the training data",
    "max_tokens": "stop after this many training tokens, e.g. 2M (0: no limit)",
    "time_budget": "stop after this much wall time, e.g. 90s, 10m, 2h (0: no limit)",
    "seed": "random seed",
    "device": "auto (cuda when available), cpu, cuda, cuda:N",
    "precision": "fp32, bf16 (bf16 GEMM operands, float32 softmax, loss, optimizer and weights) or auto "
                 "(bf16 where the device has it natively)",
    "log_interval": "steps between metrics lines",
    "eval_interval": "steps between validations (0: at epoch ends only)",
    "eval_tokens": "validate on the first N valid tokens during training (0: all)",
    "checkpoint_interval": "steps between checkpoints, also written at each epoch end (0: epoch ends only)",
}


class ConfigError(LmfixError):
    """A training setting is invalid or contradicts the run being resumed."""


@dataclass
class TrainConfig:
    """All training settings; ``HELP`` documents each (it is the CLI's help text too)."""

    # data (see `lmfix prepare`)
    corpus: str = "wikitext-2"
    data_dir: str = ""
    tokenizer: str = "word"
    vocab_size: int = 0
    spm_type: str = "unigram"
    verify: bool = True
    # the matrix E
    embed: str = "learned"
    embeddings: str = ""
    embed_seed: int = 0
    alpha: float = 10.0
    fix_alpha: bool = False
    normalize: bool = True
    head: str = "fixed"
    head_k: int = 0
    head_rank: int = 0
    unfreeze_at: float = 0.0
    # the body
    model: str = "lstm"
    emsize: int = 200
    nhid: int = 200
    nlayers: int = 2
    nhead: int = 0  # unset: ModelConfig's default for the transformer; 0 for the recurrent bodies
    positions: str = ""  # unset, as nhead
    dropout: float = 0.2
    dropouth: float = 0.2
    dropouti: float = 0.2
    dropoute: float = 0.0
    wdrop: float = 0.0
    # optimization
    optimizer: str = "sgd"
    lr: float = 0.0
    lr_decay: float = 4.0
    nonmono: int = 5
    clip: float = 0.25
    weight_decay: float = 0.0
    batch_size: int = 20
    eval_batch_size: int = 10
    bptt: int = 35
    variable_bptt: bool = False
    # budget
    epochs: int = 40
    max_tokens: int = 0
    time_budget: float = 0.0
    seed: int = 1111
    device: str = "auto"
    precision: str = "fp32"
    # reporting
    log_interval: int = 200
    eval_interval: int = 0
    eval_tokens: int = 0
    checkpoint_interval: int = 500

    def __post_init__(self) -> None:
        self._check_ranges()
        if self.embed not in EMBEDS:
            raise ConfigError(f"unknown --embed {self.embed!r}; choose one of {', '.join(EMBEDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown --optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.lr == 0:
            self.lr = DEFAULT_LR[self.optimizer]
        positive = ("emsize", "nhid", "nlayers", "batch_size", "eval_batch_size", "bptt", "epochs", "lr")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("clip", "weight_decay", "max_tokens", "time_budget", "eval_interval", "eval_tokens",
                     "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.nonmono < 1 or self.log_interval < 1 or self.lr_decay < 1:
            raise ConfigError("--nonmono and --log-interval must be >= 1, and --lr-decay >= 1 (1: no decay)")
        for name in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.embeddings and self.embed == "learned":  # the default: take the artifact's method
            from lmfix.embeddings import load_artifact

            self.embed = load_artifact(self.embeddings).method
        if self.embeddings and self.embed not in FIXED:
            raise ConfigError(f"--embeddings FILE gives a fixed matrix; drop --embed {self.embed} (or the file)")
        self._check_head()
        self._check_body()

    def _check_ranges(self) -> None:
        """Numbers the run cannot hold or compute with fail here, before anything is read or allocated."""
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{flag} must be a finite number, got {value}")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
                raise ConfigError(f"{flag} {value} does not fit config.toml's 64-bit integers (at most {INT_MAX})")
            if f.name in SCALES and abs(value) > FLOAT32_MAX:
                raise ConfigError(f"{flag} {value:g} is beyond float32's range ({FLOAT32_MAX:.4g}), in which the "
                                  f"model computes: its first step would be inf; pick a smaller {flag}")
            if f.name in SEEDS and value < 0:
                raise ConfigError(f"{flag} must be >= 0 (numpy's generators, which order the batches and build "
                                  f"the matrices, take no negative seed), got {value}")

    def _check_head(self) -> None:
        """A nearly-fixed head needs a stored fixed matrix, and exactly the options of its kind."""
        if self.head not in HEADS:
            raise ConfigError(f"unknown --head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.head != "fixed" and self.embed in LEARNED:
            raise ConfigError(f"--head {self.head} trains part of a fixed matrix, and --embed {self.embed} learns "
                              "all of E already: drop --head, or use --embed word2vec, pmi or orthogonal")
        if self.head != "fixed" and self.embed == "hadamard":
            raise ConfigError(f"--head {self.head} needs a stored matrix, and a Hadamard E is generated, never "
                              "stored: use --embed word2vec, pmi or orthogonal")
        for name, head in HEAD_OPTIONS.items():
            flag = "--" + name.replace("_", "-")
            if head == self.head and getattr(self, name) <= 0:
                raise ConfigError(f"--head {self.head} needs {flag} (a positive number)")
            if head != self.head and getattr(self, name):
                raise ConfigError(f"{flag} is for --head {head}; drop it for --head {self.head}")
        if self.head_rank > self.emsize:
            raise ConfigError(f"--head-rank {self.head_rank} is above --emsize {self.emsize}: a correction of rank "
                              f"d learns all of E; pick a rank below {self.emsize}")
        if not self.unfreeze_at < 1:
            raise ConfigError(f"--unfreeze-at is a share of the budget, below 1, got {self.unfreeze_at}")

    def _check_body(self) -> None:
        """Resolve the transformer's unset settings; refuse those the body does not have."""
        if self.model not in BODIES:
            raise ConfigError(f"unknown --model {self.model!r}; choose one of {', '.join(BODIES)}")
        if self.model in RECURRENT:
            for name in ("nhead", "positions"):
                if getattr(self, name):
                    raise ConfigError(f"--{name} is for --model transformer; drop it for --model {self.model}")
            return
        self.nhead = self.nhead or ModelConfig.nhead
        self.positions = self.positions or ModelConfig.positions
        if self.positions not in POSITIONS:
            raise ConfigError(f"unknown --positions {self.positions!r}; choose one of {', '.join(POSITIONS)}")
        if self.nhead < 0 or self.emsize % self.nhead:
            raise ConfigError(f"--nhead {self.nhead} must divide --emsize {self.emsize} (each head takes "
                              f"emsize / nhead of it); pick a divisor of {self.emsize}")
        if self.wdrop:
            raise ConfigError(f"--wdrop is DropConnect on recurrent weights, which --model {self.model} has none "
                              "of; drop it (--dropouth regularises its layers)")
        if self.variable_bptt and self.positions == "learned":
            raise ConfigError("--variable-bptt draws windows longer than --bptt, beyond the learned positions; "
                              "use --positions sinusoidal or drop --variable-bptt")

    @property
    def fixed(self) -> bool:
        return self.embed in FIXED or bool(self.embeddings)

    def model_config(self) -> ModelConfig:
        # ModelConfig's fields are a subset of ours, by name: no positional coupling.
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a mapping (a recipe, a saved config); unknown keys and wrong types are an error."""
        types = {f.name: type(f.default) for f in fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; see lmfix train --help")
        values = {}
        for key, value in data.items():
            want = types[key]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # TOML's 20 for a float setting
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"training setting {key} = {value!r} should be {want.__name__} "
                                  f"(like {getattr(cls, key)!r})")
            values[key] = value
        return cls(**values)

    def to_toml(self) -> str:
        return "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.to_dict().items())

    def save(self, run_dir: Path) -> None:
        atomic.write_text(Path(run_dir) / CONFIG_FILE, self.to_toml())

    @classmethod
    def load(cls, run_dir: Path) -> TrainConfig:
        path = Path(run_dir) / CONFIG_FILE
        try:
            return cls.from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"{run_dir} is not a training run (no {CONFIG_FILE}); check the path") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); restore it or start a new run") from exc

    def differences(self, other: TrainConfig) -> dict[str, tuple]:
        """{field: (self value, other value)} for fields that differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def resume_config(run_dir: Path, overrides: dict | None = None) -> TrainConfig:
    """The saved config of ``run_dir`` with ``overrides`` applied; only budget/reporting fields may change."""
    saved = TrainConfig.load(run_dir)
    changed = {k: v for k, v in (overrides or {}).items() if getattr(saved, k, object()) != v}
    refused = sorted(set(changed) - RESUMABLE)
    if refused:
        k = refused[0]
        flag = "--" + k.replace("_", "-")
        raise ConfigError(
            f"{run_dir} was trained with {flag} {getattr(saved, k, '?')!r}, not {changed[k]!r}: resume without "
            f"{flag}, or start a new run (--name NEW or --overwrite)"
        )
    return replace(saved, **changed)
