"""Training: ``train(config, run_dir)`` runs or resumes one run and returns a ``RunResult``.

The loop is pytorch/examples' word_language_model (SGD, gradient clipping, lr
divided by ``lr_decay`` when validation does not improve) with AWD-LSTM's
options (NT-ASGD, variable-length BPTT) and Adam/AdamW. Everything that
decides what happens next (weights, optimizer, RNG, data position, the body's
state, lr schedule) is in the checkpoint, so a killed run resumes exactly.

Under ``torchrun`` every process trains on its own ``batch_size`` columns and
DistributedDataParallel averages the gradients; a frozen E is a buffer, so it
is never synchronized. The loop reports through a callback (the CLI draws the
progress bar) and writes files only on rank 0.

One file on purpose (~500 lines): the step, the validation/lr schedule and the
checkpoint state all read and write the ``Trainer``'s progress fields, and the
loop reads top to bottom (``run`` -> ``_loop`` -> ``train_step``). Processes and
signals are in ``distributed``, results in ``results``, the run directory in ``rundir``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from lmfix.data.batching import BPTTStream, batchify_split, sliding_windows
from lmfix.errors import LmfixError
from lmfix.model.body import map_state
from lmfix.model.language_model import LanguageModel
from lmfix.ops import gemm
from lmfix.ops.precision import DTYPES, resolve_precision
from lmfix.training import checkpoint
from lmfix.training.config import CONFIG_FILE, RESUMABLE, ConfigError, TrainConfig, resume_config
from lmfix.training.distributed import (
    Dist,
    StopSignals,
    SyncCounter,
    init_distributed,
    rank0_first,
    rank0_verdict,
    release_process_group,
    resolve_device,
    wrap_ddp,
)
from lmfix.training.results import Callback, Event, RunResult, ppl, summary
from lmfix.training.rundir import check_new_run_dir, claimed, set_aside, settle_previous, settled
from lmfix.training.setup import build_model, check_vocabulary, load_corpus

DIVERGED_TIMES_UNIFORM, DIVERGED_MARGIN = 5.0, 25.0


class TrainingDiverged(LmfixError):
    """The loss or the gradient became NaN/inf."""


class Trainer:
    """One run's state and loop. ``train()`` is the entry point; this class keeps the pieces small."""

    def __init__(self, config: TrainConfig, run_dir: Path, ddp: Dist, device: torch.device, callback: Callback):
        self.cfg, self.run_dir, self.dist, self.device, self.callback = config, run_dir, ddp, device, callback
        self.corpus = rank0_first(ddp, lambda: load_corpus(config))
        torch.manual_seed(config.seed)
        self.model, self.embedding = rank0_first(ddp, lambda: build_model(config, self.corpus))
        self.model.to(device)
        self.precision = resolve_precision(config.precision, device)
        self.model.set_precision(DTYPES[self.precision])
        torch.manual_seed(config.seed + ddp.rank)  # dropout masks differ across processes
        self._track_params()
        # A loss this far above a uniform guess (ln V) is divergence, even while it is still finite
        # (a fixed head's logits span +-alpha, so its first losses may reach 2 alpha + ln V).
        reach = 2 * abs(config.alpha) if config.fixed else 0.0
        self.diverged_above = DIVERGED_TIMES_UNIFORM * math.log(len(self.corpus.vocab)) + DIVERGED_MARGIN + reach
        self.lr = config.lr
        self.optimizer_kind = "sgd" if config.optimizer == "asgd" else config.optimizer
        self.optimizer = self._make_optimizer(self.optimizer_kind)

        columns = batchify_split(self.corpus.train, config.batch_size * ddp.world, "train", "lower --batch-size")
        mine = columns[:, ddp.rank * config.batch_size : (ddp.rank + 1) * config.batch_size]
        self.stream = BPTTStream(mine.contiguous().to(device), config.bptt, config.variable_bptt, seed=config.seed)
        valid = self.corpus.valid[: config.eval_tokens or None]
        self.valid_data = batchify_split(valid, config.eval_batch_size, "valid",
                                         "lower --eval-batch-size (or raise --eval-tokens)").to(device)
        self.tokens_per_epoch = (columns.size(0) - 1) * columns.size(1)
        self.metrics = checkpoint.MetricsLog(run_dir / checkpoint.METRICS)

        # progress: everything below is saved in checkpoints
        self.step = self.epoch = self.tokens = 0
        self.elapsed = self.train_seconds = 0.0
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.valid_loss: float | None = None
        self.history: list[float] = []
        self.last_valid_step = self.last_checkpoint_step = -1
        self.budget_changes: list[dict] = []  # each resume that changed the budget: {step, field: [old, new]}
        self.state = None  # the body's, carried between windows (None: none yet, or a body without)
        # this session only (not saved): the metrics window, the clock
        self._window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        self._session_steps = 0
        self.stop_signals = StopSignals(repeat_raises=not ddp.active)
        self._started = time.perf_counter()

    # ------------------------------------------------------------------ setup

    def _make_optimizer(self, kind: str) -> torch.optim.Optimizer:
        wd = self.cfg.weight_decay
        late = self._unfrozen()
        alpha = getattr(self.model.head, "alpha", None)
        # Adam moves every parameter by about lr per step, whatever its size: right for weights of ~0.1,
        # but a fixed head's alpha starts at --alpha (10) and SGD took it to 18-19 in the LSTM recipes; at
        # lr 1e-3 it moved 10 -> 10.7 in 700 steps (a Transformer with word2vec). Its group's lr is scaled by
        # |--alpha| instead, the same relative step as a weight of size 1 (a decayed lr scales it too).
        scaled = kind in ("adam", "adamw") and alpha is not None and alpha.requires_grad
        rest = [p for p in self.params if not (scaled and p is alpha) and not any(p is q for q in late)]
        groups = [{"params": rest}]
        groups += [{"params": [alpha], "lr_scale": abs(self.cfg.alpha) or 1.0}] if scaled else []
        groups += [{"params": late}] if late else []  # as added at the switch (``unfreeze``): resumes match
        if kind == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, weight_decay=wd)
        if kind == "averaged":  # NT-ASGD after the switch, as AWD-LSTM
            # capturable on a GPU: its step count stays there, not read back (.item()) per parameter per step
            return torch.optim.ASGD(groups, lr=self.lr, t0=0, lambd=0.0, weight_decay=wd,
                                    capturable=self.device.type == "cuda")
        return (torch.optim.Adam if kind == "adam" else torch.optim.AdamW)(groups, lr=self.lr, weight_decay=wd)

    def _unfrozen(self) -> list[torch.nn.Parameter]:
        """--head unfreeze: E's parameter once the switch happened (its own last optimizer group), else none."""
        head = self.model.head
        return [head.top] if getattr(head, "unfrozen", False) else []

    def _unfreeze_when_due(self) -> None:
        """--head unfreeze: the switch, once ``unfreeze_at`` of the budget is trained."""
        if self.cfg.head == "unfreeze" and self.tokens >= self.cfg.unfreeze_at * self.total_tokens:
            self.unfreeze()

    def unfreeze(self) -> None:
        """--head unfreeze's switch (``lmfix bench recipe`` also makes it, to time the steps after it): all of E
        becomes a parameter of the optimizer (its own group: the others keep their state) and, under torchrun,
        of DDP. Once only."""
        head = self.model.head
        if head.unfrozen:
            return
        self.optimizer.add_param_group({"params": [head.unfreeze()]})
        self._track_params()

    def _track_params(self) -> None:
        """The parameters the optimizer steps, clips and (under torchrun) all-reduces: at the start, and again
        when ``--head unfreeze`` makes E one."""
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.grad_bytes = sum(p.numel() * p.element_size() for p in self.params)
        self.net, self.sync = wrap_ddp(self.model, self.device) if self.dist.active else (self.model, SyncCounter())

    @property
    def total_tokens(self) -> int:
        planned = self.cfg.epochs * self.tokens_per_epoch
        return min(planned, self.cfg.max_tokens) if self.cfg.max_tokens else planned

    # ------------------------------------------------------------------ loop

    def run(self) -> RunResult:
        self._emit("start", info=self._start_info())
        with self.stop_signals:
            reason = self._loop()
        if reason == "interrupted":
            self._save_checkpoint()
            self._emit("interrupted", info={"run_dir": str(self.run_dir), "world_size": self.dist.world})
            raise KeyboardInterrupt
        if self.last_valid_step != self.step:
            self._validate()
            self._log()
        if self.last_checkpoint_step != self.step:
            self._save_checkpoint()
        result = self._result(reason or "epochs")
        if self.dist.main:
            checkpoint.write_json(self.run_dir / checkpoint.SUMMARY, summary(result, self.cfg, self.embedding,
                                                                             self._provenance(), self.budget_changes))
        self._emit("end", info={"result": result})
        return result

    def _loop(self) -> str | None:
        """Train until the epochs are done or a budget (or Ctrl-C) stops it; returns the stop reason."""
        reason = self._stop_reason()
        while reason is None and self.epoch < self.cfg.epochs:
            if self.state is None:
                self.state = self.model.init_state(self.cfg.batch_size)
            for x, y in self.stream:
                self._unfreeze_when_due()
                self.train_step(x, y)
                reason = self._stop_reason()
                validate = self.cfg.eval_interval and self.step % self.cfg.eval_interval == 0
                if validate:
                    self._validate()
                if validate or self.step % self.cfg.log_interval == 0:
                    self._log()
                if self.cfg.checkpoint_interval and self.step % self.cfg.checkpoint_interval == 0:
                    self._save_checkpoint()
                if reason:
                    break
            else:
                self._end_epoch()
                reason = self._stop_reason()
        return reason

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on window (x, y); stops the run on a non-finite loss or gradient."""
        start = time.perf_counter()
        lr = self.lr * x.size(0) / self.cfg.bptt if self.cfg.variable_bptt else self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.state = self.model.detach(self.state)
        loss, self.state = self.net(x, y, self.state)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip or math.inf)
        value = loss.detach()
        if self.dist.active:
            dist.all_reduce(value)
            value /= self.dist.world
        value, norm = value.item(), norm.item()
        if not (math.isfinite(value) and math.isfinite(norm)) or value > self.diverged_above:
            raise self._diverged(value, norm)
        self.optimizer.step()
        self.step += 1
        self._session_steps += 1
        tokens = y.numel() * self.dist.world
        self.tokens += tokens
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        for key, amount in (("loss", value), ("steps", 1), ("tokens", tokens), ("seconds", seconds)):
            self._window[key] += amount
        self._emit("step", loss=value, lr=lr)

    def _end_epoch(self) -> None:
        if self.last_valid_step != self.step:
            self._validate()
            self._log()
        self.epoch += 1
        self.state = None
        self._save_checkpoint()

    def _stop_reason(self) -> str | None:
        """interrupted, max_tokens or time_budget once reached.

        Under DDP the ranks must stop after the same step: the interrupt flags are
        all-reduced (any rank's signal stops all) and rank 0's clock decides the time.
        """
        interrupted = self.stop_signals.requested
        out_of_time = bool(self.cfg.time_budget) and self._elapsed() >= self.cfg.time_budget
        if self.dist.active:
            flags = torch.tensor([float(interrupted), float(out_of_time and self.dist.main)], device=self.device)
            dist.all_reduce(flags, dist.ReduceOp.MAX)
            interrupted, out_of_time = bool(flags[0]), bool(flags[1])
            # Only ever set the flag here: a signal handled right after the all-reduce has set it already.
            self.stop_signals.requested = self.stop_signals.requested or interrupted
        if interrupted:
            return "interrupted"
        if self.cfg.max_tokens and self.tokens >= self.cfg.max_tokens:
            return "max_tokens"
        return "time_budget" if out_of_time else None

    def _elapsed(self) -> float:
        return self.elapsed + time.perf_counter() - self._started

    # ------------------------------------------------------------------ validation and schedules

    @contextlib.contextmanager
    def _eval_weights(self):
        """Under NT-ASGD evaluate (and save as best) the averaged weights, as AWD-LSTM does."""
        if self.optimizer_kind != "averaged":
            yield
            return
        # p.copy_ under no_grad, not p.data.copy_: only the former bumps p's version, which tells a bf16
        # run's head that its rounded copy of E is stale (LearnedHead.operand_weight)
        saved = []
        with torch.no_grad():
            for p in self.params:
                state = self.optimizer.state[p]
                if "ax" in state:
                    saved.append((p, p.detach().clone()))
                    p.copy_(state["ax"])
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)

    def _validate(self) -> None:
        loss = torch.zeros(1, device=self.device)  # nccl broadcasts CUDA tensors only
        with self._eval_weights():
            if self.dist.main:
                loss[0] = corpus_loss(self.model, self.valid_data, self.cfg.bptt)[0]
            if self.dist.active:
                dist.broadcast(loss, 0)
            loss = loss.item()
            if not math.isfinite(loss) or loss > self.diverged_above:  # best.pt is never a diverged model
                raise self._diverged(loss, math.nan, "validation")
            improved = loss < self.best_loss
            if improved:
                self.best_loss, self.best_step = loss, self.step
                self._save_best()
        if self.cfg.optimizer == "asgd":
            nonmono = self.cfg.nonmono
            stalled = len(self.history) > nonmono and loss > min(self.history[:-nonmono])
            if self.optimizer_kind == "sgd" and stalled:
                self.optimizer_kind = "averaged"
                self.optimizer = self._make_optimizer("averaged")
        elif not improved:
            self.lr /= self.cfg.lr_decay
        self.history.append(loss)
        self.valid_loss, self.last_valid_step = loss, self.step
        self._emit("valid", valid_ppl=ppl(loss), lr=self.lr)

    def _save_best(self) -> None:
        if self.dist.main:
            checkpoint.save(self.run_dir / checkpoint.BEST, {
                "model": self.model.state_dict(), "step": self.step, "tokens": self.tokens,
                "valid_loss": self.best_loss, "embedding": self.embedding, "config": self.cfg.to_dict(),
                "vocab_fingerprint": self.corpus.vocab.fingerprint, "precision": self.precision,
            })

    # ------------------------------------------------------------------ metrics and checkpoints

    def _log(self) -> None:
        w = self._window
        train_loss = w["loss"] / w["steps"] if w["steps"] else None
        head = self.model.head
        stats = head.stats() if hasattr(head, "stats") else {}
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "tokens": self.tokens,
            "train_loss": train_loss,
            "train_ppl": checkpoint.clean(ppl(train_loss)) if train_loss is not None else None,
            "lr": self.lr,
            "alpha": head.alpha.item() if hasattr(head, "alpha") else None,
            **({"head": stats} if stats else {}),
            "valid_loss": self.valid_loss if self.last_valid_step == self.step else None,
            "valid_ppl": checkpoint.clean(ppl(self.valid_loss)) if self.last_valid_step == self.step else None,
            "tok_s": w["tokens"] / w["seconds"] if w["seconds"] else None,
            "wall": self._elapsed(),
        }
        if self.dist.main:
            self.metrics.append(record)
        self._window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}

    def _save_checkpoint(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.params):  # never replace a good checkpoint with this
            raise self._diverged(math.nan, math.nan, "weights")
        # "hidden": the body's state; checkpoints from before the body interface hold the LSTM's as
        # [[h, c], ...] per layer, the same layout, so they resume as they are
        local = {"rng": torch.get_rng_state(), "hidden": map_state(torch.Tensor.cpu, self.state)}
        if self.device.type == "cuda":
            local["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        ranks = [local]
        if self.dist.active:
            ranks = [None] * self.dist.world
            dist.all_gather_object(ranks, local)
        self.last_checkpoint_step = self.step
        if not self.dist.main:
            return
        checkpoint.save(self.run_dir / checkpoint.LAST, {
            "config": self.cfg.to_dict(),
            "embedding": self.embedding,
            "vocab_fingerprint": self.corpus.vocab.fingerprint,
            "precision": self.precision,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_kind": self.optimizer_kind,
            "stream": self.stream.state_dict(),
            "ranks": ranks,
            "progress": {
                "step": self.step, "epoch": self.epoch, "tokens": self.tokens, "elapsed": self._elapsed(),
                "train_seconds": self.train_seconds, "lr": self.lr, "best_loss": self.best_loss,
                "valid_loss": self.valid_loss, "history": self.history, "last_valid_step": self.last_valid_step,
                "budget_changes": self.budget_changes, "best_step": self.best_step,
            },
        })
        self._emit("checkpoint")

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint written by ``_save_checkpoint``."""
        if len(state["ranks"]) != self.dist.world:
            raise ConfigError(
                f"{self.run_dir} was trained with {len(state['ranks'])} process(es); resume it with the same "
                f"number (torchrun --nproc-per-node {len(state['ranks'])})"
            )
        trained = state.get("precision", "fp32")  # checkpoints before --precision were float32
        if trained != self.precision:
            raise ConfigError(
                f"{self.run_dir} was trained in {trained} but --precision {self.cfg.precision} gives "
                f"{self.precision} here; resume it on a machine where {trained} runs (mixing them is refused)"
            )
        check_vocabulary(self.run_dir, state["vocab_fingerprint"], self.corpus)
        if state["embedding"] and state["embedding"]["id"] != self.embedding["id"]:
            raise ConfigError(
                f"the fixed matrix changed: the run used artifact {state['embedding']['id']}, found "
                f"{self.embedding['id']}; restore {state['embedding']['path']}"
            )
        checkpoint.load_weights(self.model, state["model"], self.run_dir / checkpoint.LAST)
        if self._unfrozen():  # --head unfreeze resumed after its switch: loading the weights made E a parameter
            self._track_params()
        self.optimizer_kind = state["optimizer_kind"]
        self.optimizer = self._make_optimizer(self.optimizer_kind)
        saved, made = len(state["optimizer"]["param_groups"]), len(self.optimizer.param_groups)
        if saved != made:  # Adam runs of a fixed head from before alpha had its own group
            raise ConfigError(f"{self.run_dir}'s optimizer state has {saved} parameter group(s) where this lmfix "
                              f"makes {made} (alpha's own learning rate under Adam); finish the run with the "
                              "lmfix that started it, or train it again")
        for saved_group, group in zip(state["optimizer"]["param_groups"], self.optimizer.param_groups, strict=True):
            if "capturable" in group:  # as this device made it (ASGD: on a GPU), so a CUDA run resumes on a CPU
                saved_group["capturable"] = group["capturable"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        mine = state["ranks"][self.dist.rank]
        torch.set_rng_state(mine["rng"])
        if "cuda_rng" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.state = map_state(lambda t: t.to(self.device), mine["hidden"])
        p = state["progress"]
        self.step, self.epoch, self.tokens = p["step"], p["epoch"], p["tokens"]
        self.elapsed, self.train_seconds, self.lr = p["elapsed"], p["train_seconds"], p["lr"]
        self.best_loss, self.valid_loss, self.history = p["best_loss"], p["valid_loss"], list(p["history"])
        self.last_valid_step = p["last_valid_step"]
        self.last_checkpoint_step = self.step
        self.budget_changes, self.best_step = list(p.get("budget_changes", [])), p.get("best_step")
        self._check_resumed_config(state["config"])
        if self.dist.main:
            self.metrics.truncate(self.step)

    def _provenance(self) -> dict:
        """What the summary says of the text and the best checkpoint: an evaluation of another step is stale."""
        return {"vocab_fingerprint": self.corpus.vocab.fingerprint, "splits": self.corpus.checksums(),
                "best_step": self.best_step}

    def _check_resumed_config(self, saved: dict) -> None:
        """The run goes on as the experiment its checkpoint was: config.toml edited by hand is refused, a changed
        budget is kept in ``budget_changes`` (and config.toml), and a budget already spent is refused."""
        mine = self.cfg.to_dict()
        edited = sorted(k for k in saved.keys() & mine.keys() - RESUMABLE if saved[k] != mine[k])
        if edited:
            k = edited[0]
            raise ConfigError(f"{self.run_dir / CONFIG_FILE} says {k} = {mine[k]!r} but the run was trained with "
                              f"{saved[k]!r} (the file was edited): restore it, or start a new run")
        budget = {k: [saved[k], mine[k]] for k in ("epochs", "max_tokens", "time_budget")
                  if k in saved and saved[k] != mine[k]}
        if not budget:
            return
        if self.epoch >= self.cfg.epochs or self._stop_reason() in ("max_tokens", "time_budget"):
            k = next(iter(budget))
            raise ConfigError(f"{self.run_dir} has trained {self.tokens:,} tokens ({self.epoch} epochs, "
                              f"{self._elapsed():.0f} s) already: --{k.replace('_', '-')} {mine[k]} would train "
                              "nothing; resume with a larger budget")
        self.budget_changes.append({"step": self.step, **budget})

    # ------------------------------------------------------------------ reporting

    def _diverged(self, loss: float, norm: float, where: str = "training") -> TrainingDiverged:
        last = self.run_dir / checkpoint.LAST
        kept = (f"the last good checkpoint {last} (step {self.last_checkpoint_step}) is kept"
                if self.last_checkpoint_step >= 0 else "no checkpoint had been written yet")
        what = {"training": f"loss {loss:.4g}, gradient norm {norm:.4g}", "validation": f"valid loss {loss:.4g}",
                "weights": "non-finite weights"}[where]
        return TrainingDiverged(
            f"training diverged at step {self.step + 1} ({what}; a uniform guess scores ln V = "
            f"{math.log(len(self.corpus.vocab)):.2f}, the limit is {self.diverged_above:.1f}; lr {self.lr:g}); "
            f"{kept}: start again with a lower --lr or --clip"
        )

    def _emit(self, kind: str, **kwargs) -> None:
        if self.dist.main:
            self.callback(Event(kind, self.step, self.tokens, self.total_tokens, **kwargs))

    def _start_info(self) -> dict:
        return {
            "counts": self.model.counts(), "device": str(self.device), "world_size": self.dist.world,
            "tokens_per_epoch": self.tokens_per_epoch, "grad_bytes_per_step": self.grad_bytes,
            "vocab_size": len(self.corpus.vocab), "embedding": self.embedding, "resumed": self.step > 0,
            "precision": self.precision,
        }

    def _result(self, reason: str) -> RunResult:
        valid_ppl = ppl(self.valid_loss) if self.valid_loss is not None else math.nan
        return RunResult(
            run_dir=self.run_dir,
            steps=self.step,
            tokens=self.tokens,
            epochs=self.epoch,
            best_valid_ppl=ppl(self.best_loss),
            final_valid_ppl=valid_ppl,
            train_tokens_per_second=self.tokens / self.train_seconds if self.train_seconds else 0.0,
            wall_seconds=self._elapsed(),
            stop_reason=reason,
            counts=self.model.counts(),
            grad_bytes_per_step=self.grad_bytes,
            sync_bytes_per_step=self.sync.bytes / self._session_steps if self.dist.active and self._session_steps
            else None,
            world_size=self.dist.world,
            precision=self.precision,
        )


@torch.no_grad()
def corpus_loss(model: LanguageModel, data: torch.Tensor, bptt: int, stride: int | None = None) -> tuple[float, int]:
    """Mean cross entropy (nats/token) over batchified ``data`` and the number of tokens scored.

    Windows of ``bptt`` tokens, one after the other; a ``stride`` below ``bptt`` slides
    them instead (for a body without state: see ``sliding_windows``), each token still
    scored once.
    """
    was_training = model.training
    model.eval()
    state = model.init_state(data.size(1))
    total, count = torch.zeros((), dtype=torch.float64, device=data.device), 0  # summed where it lives: no sync
    for x, y in sliding_windows(data, bptt, stride or bptt):
        loss, state = model(x, y, state, reduction="sum")
        total += loss
        count += y.numel()
    model.train(was_training)
    return total.item() / count, count


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callback: Callback | None = None,
) -> RunResult:
    """Train ``config`` into ``run_dir`` (new, ``overwrite``-n, or ``resume``-d) and return the result.

    With ``resume`` the config must equal the saved one except budget and
    reporting fields (see ``resume_config``, which builds such a config).
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    gemm.configured()  # a bad $LMFIX_GEMM fails here, before the run directory is touched
    resolve_precision(config.precision, resolve_device(config.device))  # and bf16 where it cannot run
    state = None
    if resume:
        resume_config(settled(run_dir), config.to_dict())
        if not (run_dir / checkpoint.LAST).is_file():
            raise checkpoint.CheckpointError(
                f"nothing to resume in {run_dir}: it stopped before its first checkpoint; start it again "
                f"with --overwrite"
            )
        state = checkpoint.load(run_dir / checkpoint.LAST)
    ddp, device, created_group = init_distributed(config.device)
    try:
        with contextlib.ExitStack() as claim:
            # Rank 0 alone claims and checks the directory; every rank gets its verdict.
            rank0_verdict(ddp, lambda: _claim(claim, run_dir, resume, overwrite))
            trainer = Trainer(config, run_dir, ddp, device, callback or (lambda event: None))
            if state is not None:
                trainer.restore(state)
                if ddp.main and trainer.budget_changes:
                    config.save(run_dir)  # what the run really trained for, for compare to see
            elif ddp.main:
                if overwrite:
                    set_aside(run_dir)
                config.save(run_dir)
            ddp.barrier()
            try:
                result = trainer.run()
            finally:
                if ddp.main and overwrite:
                    settle_previous(run_dir, trainer.last_checkpoint_step >= 0)
            ddp.barrier()  # nobody tears the process group down while another process still uses it
            return result
    finally:
        trainer = None  # frees its DDP wrapper (and the process group reference it holds) before the group goes
        if created_group:
            release_process_group()


def _claim(stack: contextlib.ExitStack, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check, then lock, then check again: nothing is added to a folder lmfix refuses, and no other
    process can have started this run between the check and the lock."""
    if not resume:
        check_new_run_dir(run_dir, overwrite)
    stack.enter_context(claimed(run_dir))
    if not resume:
        check_new_run_dir(run_dir, overwrite)
