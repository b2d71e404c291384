"""What a fixed head is worth per trained parameter and per second: the frontier plots and the
time-to-target table, from finished runs (``compare_runs(frontier=True)``, ``lmfix compare --frontier``,
a recipe's ``frontier = true``).

* ``frontier_params.png``: test perplexity against trained parameters (log axis), every run a point,
  the learned runs (tied, any width) joined by a line: a fixed-head run below that line beats a learned
  model of its trained size.
* ``frontier_time.png``: the same against training time. Runs trained on different machines, or beside
  other work, have wall-clocks that say more about the machine than the model; with a ``Clock`` (the
  step times ``lmfix bench recipe --save`` measured for every variant side by side, in one process) a
  run's time is its training tokens at its variant's measured rate, the same clock for every run.
  Without one, ``summary.json``'s ``wall_seconds``, and the table says so.
* the time-to-target table: the training tokens and time each run needed to reach the validation
  perplexity the learned baseline of its seed had after 1, 2 and 4 epochs (mean over the seeds that
  reached it), or "not reached".
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmfix import atomic
from lmfix.analysis.seeds import group_name
from lmfix.errors import LmfixError

PARAMS_PLOT = "frontier_params.png"
TIME_PLOT = "frontier_time.png"
TARGET_EPOCHS = (1, 2, 4)
STEP_TIMES = "step_times.json"  # a recipe's clock, in its results/ folder (lmfix bench recipe --save)


@dataclass(frozen=True)
class Clock:
    """Training tokens per second of each variant, measured side by side on one machine. A ``--head unfreeze``
    variant has two: its frozen head's rate before the switch (``tok_s``) and a learned E's after it
    (``after_unfreeze``)."""

    tok_s: dict[str, float]
    machine: str  # where and when: "AMD EPYC, 2 threads, torch 2.13.0, 2026-12-07"
    after_unfreeze: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_bench(cls, result: dict) -> Clock:
        """From ``bench_configs``' result."""
        machine = f"{result['cpu']}, {result['threads']} threads, torch {result['torch']}, {result['date']}"
        return cls({name: r["median_tok_s"] for name, r in result["variants"].items()}, machine,
                   {name: r["median_tok_s"] for name, r in result["after_unfreeze"].items()})

    def save(self, path: Path) -> None:
        raw = {"machine": self.machine, "tok_s": self.tok_s, "after_unfreeze": self.after_unfreeze}
        atomic.write_text(path, json.dumps(raw, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Clock:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            clock = cls({str(k): float(v) for k, v in raw["tok_s"].items()}, str(raw["machine"]),
                        {str(k): float(v) for k, v in raw.get("after_unfreeze", {}).items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise LmfixError(f"{path} is not a step-time file lmfix wrote ({e}); write it again with "
                             "lmfix bench recipe RECIPE --save") from None
        if not all(v > 0 for v in [*clock.tok_s.values(), *clock.after_unfreeze.values()]):
            raise LmfixError(f"{path} has a rate that is not positive; write it again with lmfix bench recipe "
                             "RECIPE --save")
        return clock

    def covers(self, run) -> bool:
        """Whether this clock times ``run``: its variant's rate, and for ``--head unfreeze`` the rate after the
        switch and where the switch was (a run that stopped on its time budget does not say)."""
        group = group_name(run.name)
        if run.config.head == "unfreeze" and (group not in self.after_unfreeze or _switch_tokens(run) is None):
            return False
        return group in self.tok_s

    def seconds(self, run, tokens: float) -> float:
        group = group_name(run.name)
        if run.config.head != "unfreeze":
            return tokens / self.tok_s[group]
        frozen = min(tokens, _switch_tokens(run))
        return frozen / self.tok_s[group] + (tokens - frozen) / self.after_unfreeze[group]


def _switch_tokens(run) -> float | None:
    """Training tokens at a ``--head unfreeze`` run's switch (``unfreeze_at`` of its budget, to within a step),
    when its summary says what its budget was: all its epochs trained, or stopped at --max-tokens."""
    budget = {"epochs": run.summary["tokens"], "max_tokens": run.config.max_tokens}.get(run.summary.get("stop_reason"))
    return run.config.unfreeze_at * budget if budget else None


def _learned(run) -> bool:
    return run.config.embed == "learned"


def _epoch_targets(base, epochs: tuple[int, ...]) -> dict[int, float]:
    """The baseline run's validation perplexity at the end of each of ``epochs`` it trained (the last
    validation at or before that many epochs' tokens)."""
    summary = base.summary
    if summary.get("stop_reason") != "epochs" or not summary.get("epochs"):
        return {}
    per_epoch = summary["tokens"] / summary["epochs"]
    curve = [(m["tokens"], m["valid_ppl"]) for m in base.metrics if m.get("valid_ppl") is not None]
    targets = {}
    for epoch in epochs:
        if epoch > summary["epochs"]:
            continue
        seen = [ppl for tokens, ppl in curve if tokens <= epoch * per_epoch + 0.5]
        if seen:
            targets[epoch] = seen[-1]
    return targets


def _reached(run, target: float, clock: Clock | None) -> tuple[int, float] | None:
    """(tokens, seconds) of the first validation of ``run`` at or below ``target``: seconds on ``clock``, or
    the run's own wall-clock without one."""
    for m in run.metrics:
        if m.get("valid_ppl") is not None and m["valid_ppl"] <= target:
            return m["tokens"], clock.seconds(run, m["tokens"]) if clock else m["wall"]
    return None


def _short(n: float) -> str:
    if n < 10_000:
        return f"{n:,.0f}"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _usable(clock: Clock | None, runs: list) -> Clock | None:
    """``clock`` when it times every run: one clock for all, never two mixed in a table."""
    return clock if clock is not None and all(clock.covers(r) for r in runs) else None


def _time_note(clock: Clock | None, runs: list, given: Clock | None) -> str:
    if clock:
        return (f"Time: training tokens at each variant's step time as lmfix bench recipe measured it, every variant "
                f"side by side ({clock.machine}; evaluation not counted), so runs trained on other machines are "
                "timed alike.")
    lacking = sorted({group_name(r.name) for r in runs if not given.covers(r)}) if given else []
    why = f" (the step-time file does not time {', '.join(lacking)})" if lacking else ""
    return (f"Time: training wall-clock as each run measured it{why}: compare it between runs trained on the same "
            "machine only, or time every variant with lmfix bench recipe --save.")


def time_to_target(groups: dict[str, list], base_group: list, clock: Clock | None = None) -> str | None:
    """The time-to-target table (markdown), or None without a learned baseline trained for whole epochs;
    times on ``clock`` when it covers every run."""
    if not base_group:
        return None
    bases = {r.config.seed: r for r in base_group}
    targets = {seed: _epoch_targets(run, TARGET_EPOCHS) for seed, run in bases.items()}
    epochs = sorted({e for t in targets.values() for e in t})
    if not epochs:
        return None
    runs = [r for members in groups.values() for r in members]
    used = _usable(clock, runs)
    header = " | ".join(f"to learned's {e}-epoch valid ppl" for e in epochs)
    lines = [f"| group | seeds | {header} |", "|" + "---|" * (len(epochs) + 2)]
    for name, members in groups.items():
        cells = []
        for epoch in epochs:
            hits = [(run, targets.get(run.config.seed, {}).get(epoch)) for run in members]
            hits = [_reached(run, target, used) for run, target in hits if target is not None]
            done = [h for h in hits if h is not None]
            if not hits:
                cells.append("—")
            elif not done:
                cells.append("not reached")
            else:
                tokens = statistics.fmean(t for t, _ in done)
                seconds = statistics.fmean(s for _, s in done)
                partial = f" ({len(done)} of {len(hits)} seeds)" if len(done) < len(hits) else ""
                cells.append(f"{_short(tokens)} tok, {_minutes(seconds)}{partial}")
        lines.append(f"| {name} | {', '.join(str(r.config.seed) for r in members)} | {' | '.join(cells)} |")
    notes = ["", "Each run against the validation perplexity its seed's learned tied run "
             f"({group_name(base_group[0].name)}) had after that many epochs: the first validation at or below it "
             "(tokens and training time, mean over the seeds that reached it). " + _time_note(used, runs, clock)]
    return "\n".join(lines + notes) + "\n"


def frontier_plots(runs: list, out_dir: Path, clock: Clock | None = None) -> list[Path]:
    """Test perplexity against trained parameters and against training time (on ``clock`` when it covers
    every run); none without test results."""
    tested = [r for r in runs if r.test_ppl is not None]
    if not tested:
        return []
    params = [(r, r.summary["params"]["trainable"]) for r in tested]
    used = _usable(clock, tested)
    if used:
        seconds = [(r, used.seconds(r, r.summary["tokens"])) for r in tested]
        xlabel = f"training minutes at the step times lmfix bench recipe measured\n({used.machine})"  # the machine on a line of its own: one line was cut off
    else:
        seconds = [(r, r.summary["wall_seconds"]) for r in tested]
        xlabel = "training wall-clock, as each run measured it (minutes)"
    return [
        _scatter(out_dir / PARAMS_PLOT, params, "trained parameters (log scale)", "Test perplexity per trained "
                 "parameter", log_x=True),
        _scatter(out_dir / TIME_PLOT, seconds, xlabel, "Test perplexity per training second", scale=1 / 60),
    ]


def _scatter(out: Path, points: list[tuple], xlabel: str, title: str, log_x: bool = False,
             scale: float = 1.0) -> Path:
    """One marker per group (its seeds as points), the learned groups' means joined by a line (by x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    by_group: dict[str, list[tuple[float, float]]] = {}
    learned: set[str] = set()
    for run, x in points:
        by_group.setdefault(group_name(run.name), []).append((x * scale, run.test_ppl))
        if _learned(run):
            learned.add(group_name(run.name))
    means = sorted((statistics.fmean(x for x, _ in by_group[name]), statistics.fmean(y for _, y in by_group[name]))
                   for name in learned)
    if len(means) > 1:
        ax.plot(*zip(*means, strict=True), color="black", linewidth=1, zorder=1, label="learned models (group means)")
    markers = "osD^v<>pPX*h"
    for i, (name, xy) in enumerate(by_group.items()):
        ax.scatter(*zip(*xy, strict=True), marker=markers[i % len(markers)], s=36, zorder=2, label=name)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("log")
    for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        set_formatter(formatter)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
