"""``compare_runs``: a markdown table of finished runs against the learned tied baseline, and PNG plots.

The table is what the paper's claims are checked with: trainable vs stored vs
total parameters (a fixed E is stored but not trained; a Hadamard E is not
even stored), perplexity and its change versus the learned tied run, speed.
Plots: validation perplexity against tokens seen (all runs), alpha over
training for the fixed runs (the paper's Figure 1), and how far each variant's
validation perplexity is from the learned tied run's as training goes on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from lmfix import atomic
from lmfix.analysis.frontier import PARAMS_PLOT, TIME_PLOT, Clock, frontier_plots, time_to_target
from lmfix.analysis.seeds import group_name, paired_change, spread
from lmfix.errors import LmfixError
from lmfix.model.registry import FIXED
from lmfix.training import checkpoint
from lmfix.training.config import TrainConfig
from lmfix.training.results import current

# Fields runs being compared may differ in: the matrix (and its seed), the run seed, the precision (does
# bf16 change the answer?), and where or how verbosely they ran. Any other difference means the runs answer
# different questions.
MAY_DIFFER = frozenset({"embed", "embeddings", "embed_seed", "seed", "precision", "device", "verify", "data_dir",
                        "log_interval", "checkpoint_interval"})
HEAD_OPTIONS = ("alpha", "fix_alpha", "normalize", "head", "head_k", "head_rank", "unfreeze_at")  # a fixed E's only
TABLE = "compare.md"
VALID_PLOT = "valid_ppl.png"
ALPHA_PLOT = "alpha.png"
GAP_PLOT = "gap.png"


@dataclass
class Run:
    """What a finished run directory says about itself."""

    path: Path
    config: TrainConfig
    summary: dict
    evals: dict
    metrics: list[dict]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def valid_ppl(self) -> tuple[float | None, bool]:
        """(ppl, measured by lmfix evaluate) — else the best validation seen during training."""
        if "valid" in self.evals:
            return self.evals["valid"]["ppl"], True
        return self.summary.get("best_valid_ppl"), False

    @property
    def test_ppl(self) -> float | None:
        return self.evals.get("test", {}).get("ppl")


def load_run(path: Path) -> Run:
    path = Path(path)
    config = TrainConfig.load(path)
    summary = checkpoint.read_json(path / checkpoint.SUMMARY)
    if summary is None:
        raise checkpoint.CheckpointError(
            f"{path} has not finished training (no {checkpoint.SUMMARY}); finish it with lmfix train --resume {path}"
        )
    evals = checkpoint.read_json(path / checkpoint.EVAL) or {}
    for where, ppl in [(checkpoint.SUMMARY, summary.get("best_valid_ppl"))] + [
            (f"{checkpoint.EVAL} ({split})", e.get("ppl")) for split, e in evals.items() if isinstance(e, dict)]:
        if ppl is not None and not (isinstance(ppl, int | float) and math.isfinite(ppl)):
            raise CompareError(f"{path / where.split()[0]} holds perplexity {ppl!r}, not a finite number: "
                               f"evaluate it again (lmfix evaluate {path}) or leave the run out")
    for split, evaluation in evals.items():
        if isinstance(evaluation, dict) and not current(evaluation, summary):
            raise CompareError(f"{path / checkpoint.EVAL} ({split}) describes step {evaluation.get('step')}, not the "
                               f"best checkpoint the run ended with: evaluate it again (lmfix evaluate {path} "
                               f"--split {split})")
    return Run(path, config, summary, evals, checkpoint.MetricsLog(path / checkpoint.METRICS).read())


def _count(n: int) -> str:
    if n < 10_000:
        return f"{n:,}"
    return f"{n / 1e3:.1f}k" if n < 1_000_000 else f"{n / 1e6:.2f}M"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _change(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "—"
    return f"{100 * (value / base - 1):+.1f}%"


def _ppl(value: float | None, mark: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{mark}"


def variant(run: Run) -> str:
    cfg = run.config
    name = cfg.embed
    if cfg.fixed:
        head = {"top-k": f"top-{cfg.head_k}", "low-rank": f"low-rank {cfg.head_rank}",
                "unfreeze": f"unfreeze at {cfg.unfreeze_at:g}"}.get(cfg.head, cfg.head)
        extras = [x for x, on in ((head, cfg.head != "fixed"), ("fixed alpha", cfg.fix_alpha),
                                  ("no norm", not cfg.normalize)) if on]
        name += f" ({', '.join(extras)})" if extras else ""
    return name if cfg.precision == "fp32" else f"{name} {cfg.precision}"


def _learned(runs: list[Run]) -> bool:
    return all(r.config.embed == "learned" for r in runs)


def _baseline(candidates: list[list[Run]]) -> list[Run] | None:
    """The learned tied baseline among ``candidates`` (runs or groups of runs): the first in fp32, else the first."""
    learned = [c for c in candidates if _learned(c)]
    return next((c for c in learned if c[0].config.precision == "fp32"), learned[0] if learned else None)


_HEADER = ("| run | variant | trainable | stored | total | trainable vs learned | valid ppl | Δ valid | test ppl "
           "| Δ test | train tok/s | wall |")


def markdown_table(runs: list[Run]) -> str:
    """One row per run; changes are relative to the learned tied run of the same seed (the baseline group's,
    fp32 first), else to the baseline group's first run."""
    base_group = _baseline(list(groups(runs).values())) or []
    same_seed: dict[int, Run] = {}
    for run in base_group:
        same_seed.setdefault(run.config.seed, run)
    used: list[str] = []  # the baselines the rows were measured against
    lines = [_HEADER, "|" + "---|" * 12]
    estimated = False
    for run in runs:
        base = same_seed.get(run.config.seed, base_group[0] if base_group else None)
        if base is not None and base.name not in used:
            used.append(base.name)
        base_trainable = base.summary["params"]["trainable"] if base else None
        base_valid = base.valid_ppl[0] if base else None
        base_test = base.test_ppl if base else None
        params = run.summary["params"]
        valid, measured = run.valid_ppl
        estimated |= not measured
        lines.append(
            f"| {run.name} | {variant(run)} | {_count(params['trainable'])} | {_count(params['stored'])} "
            f"| {_count(params['total'])} | {_change(params['trainable'], base_trainable)} "
            f"| {_ppl(valid, '' if measured else '*')} | {_change(valid, base_valid)} | {_ppl(run.test_ppl)} "
            f"| {_change(run.test_ppl, base_test)} | {run.summary['train_tokens_per_second']:,.0f} "
            f"| {_duration(run.summary['wall_seconds'])} |"
        )
    notes = ["", "trainable: learned by the optimizer; stored: trainable + fixed values kept in memory/on disk; "
             "total: stored + generated (a Hadamard E is computed, never stored)."]
    if not used:
        notes.append("No learned tied run (--embed learned) among these runs: changes are not available.")
    elif len(used) == 1:
        notes.append(f"Changes are relative to the learned tied run {used[0]}.")
    else:
        others = [r.name for r in runs if r.config.seed not in same_seed]
        notes.append(f"Changes are relative to the learned tied run of the same seed ({', '.join(used)})"
                     + (f"; {', '.join(others)}: to {base_group[0].name}." if others else "."))
    if estimated:
        notes.append("* best validation perplexity during training (on the first eval_tokens tokens when set); "
                     "lmfix evaluate RUN --split valid measures the whole split.")
    if any(r.test_ppl is None for r in runs):
        notes.append("— test perplexity: run lmfix evaluate RUN (batch size 1).")
    return "\n".join(lines + notes) + "\n"


def groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by variant group (``NAME-seedN`` -> ``NAME``), in the order the groups first appear."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        name = group_name(run.name)
        if name == run.name and name in grouped:  # no seed suffix: a run of its own (runs/a/learned, runs/b/learned)
            name = f"{run.path.parent.name}/{run.name}"
        grouped.setdefault(name, []).append(run)
    return grouped


def by_seed(members: list[Run]) -> dict[int, float]:
    """Test perplexity by run seed, for the runs that have one."""
    return {r.config.seed: r.test_ppl for r in members if r.test_ppl is not None}


def _one_run_per_seed(grouped: dict[str, list[Run]]) -> None:
    """Two runs of one group and seed (``lmfix compare a/pmi-seed1 b/pmi-seed1``) would count once: refuse."""
    for name, members in grouped.items():
        seen: dict[int, Run] = {}
        for run in members:
            other = seen.setdefault(run.config.seed, run)
            if other is not run:
                raise CompareError(f"{other.path} and {run.path} are both group {name} with seed {run.config.seed}: "
                                   "compare one of them")


def _of(values: list, members: list[Run]) -> str:
    """``spread(values)``, saying how many runs it covers when not all of ``members``."""
    if not values:
        return "—"
    return str(spread(values)) + (f" ({len(values)} of {len(members)} runs)" if len(values) < len(members) else "")


def seeds_table(runs: list[Run]) -> str | None:
    """Mean ± std over seeds per group and the paired change against the learned tied group; None when
    no group has more than one run."""
    grouped = groups(runs)
    if all(len(members) == 1 for members in grouped.values()):
        return None
    _one_run_per_seed(grouped)
    base = _baseline(list(grouped.values()))
    base_name = group_name(base[0].name) if base else None
    lines = ["| group | variant | seeds | valid ppl (mean ± std) | test ppl (mean ± std) "
             "| test ppl vs learned, paired by seed (mean, 95% CI) |", "|" + "---|" * 6]
    for name, members in grouped.items():
        valid = [r.valid_ppl[0] for r in members if r.valid_ppl[0] is not None]
        test = list(by_seed(members).values())
        if base is None or members is base:
            change = "—"
        else:
            change = paired_change(by_seed(members), by_seed(base)) or f"— (no evaluated seed shared with {base_name})"
        lines.append(
            f"| {name} | {variant(members[0])} | {', '.join(str(r.config.seed) for r in members)} "
            f"| {_of(valid, members)} | {_of(test, members)} | {change} |"
        )
    notes = ["", "Runs named NAME-seedN form the group NAME. std: sample standard deviation over seeds. The change "
             "is computed seed by seed (same run and embedding seed) and averaged; the interval is Student-t."]
    if base is None:
        notes.append("No learned tied group among these runs: no paired changes.")
    elif len([m for m in grouped.values() if _learned(m)]) > 1:
        notes.append(f"Changes are against the group {base_name}.")
    return "\n".join(lines + notes) + "\n"


def precision_table(runs: list[Run]) -> str | None:
    """Each group trained in another precision against the same variant in fp32, test perplexity paired by
    seed; None without groups in both precisions."""
    grouped = groups(runs)

    def key(members: list[Run]) -> TrainConfig:  # the settings a pair shares
        return replace(members[0].config, precision="fp32", seed=0, embeddings="", embed_seed=0)

    def matrices(members: list[Run]) -> dict[int, str | None]:  # the fixed matrix's id by seed (None: learned)
        return {r.config.seed: (r.summary.get("embedding") or {}).get("id") for r in members}

    def paired_seeds(members: list[Run], base: list[Run]) -> set[int]:
        """Seeds both trained on one matrix: hadamard and its truncated layout share settings, not matrices."""
        mine, theirs = matrices(members), matrices(base)
        return {seed for seed in mine.keys() & theirs.keys() if mine[seed] == theirs[seed]}

    fp32 = [(key(m), name, m) for name, m in grouped.items() if m[0].config.precision == "fp32"]
    others = [(name, m) for name, m in grouped.items() if m[0].config.precision != "fp32"]
    if not others or not fp32:
        return None
    lines = ["| group | against | test ppl change, paired by seed (mean, 95% CI) |", "|---|---|---|"]
    for name, members in others:
        pairs = [(paired_seeds(members, base), base_name, base) for settings, base_name, base in fp32
                 if settings == key(members)]
        seeds, base_name, base = max(pairs, key=lambda pair: len(pair[0]), default=(set(), "", []))
        if not seeds:
            lines.append(f"| {name} | — | — (no fp32 run of the same variant, seed and matrix) |")
            continue
        change = paired_change({s: v for s, v in by_seed(members).items() if s in seeds}, by_seed(base))
        lines.append(f"| {name} | {base_name} | {'—' if change is None else change} |")
    return "\n".join(lines + ["", "The same variant and seeds in another precision: what the precision alone "
                                "changes."]) + "\n"


def _band(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(tokens, mean, min, max) over ``curves`` ({tokens: value}) at the token counts every curve has."""
    tokens = sorted(set.intersection(*(set(c) for c in curves)))
    values = [[c[t] for c in curves] for t in tokens]
    return tokens, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _curve(run: Run, key: str) -> dict[int, float]:
    return {m["tokens"]: m[key] for m in run.metrics if m.get(key) is not None}


def seed_gaps(runs: list[Run]) -> dict[str, dict[int, dict[int, float]]]:
    """Per group but the baseline, per seed the learned tied group also ran: the validation perplexity's
    change (%) against the learned run of that seed, {tokens: change} at every token count both logged."""
    grouped = groups(runs)
    base = _baseline(list(grouped.values()))
    if base is None:
        return {}
    base_curves = {r.config.seed: _curve(r, "valid_ppl") for r in base}
    result = {}
    for name, members in grouped.items():
        if members is base:
            continue
        gaps = {}
        for run in members:
            mine, theirs = _curve(run, "valid_ppl"), base_curves.get(run.config.seed, {})
            gap = {t: 100 * (mine[t] / theirs[t] - 1) for t in sorted(mine.keys() & theirs.keys())}
            if gap:
                gaps[run.config.seed] = gap
        result[name] = gaps
    return result


def gap_series(runs: list[Run]) -> list[tuple]:
    """The gap plot's curves (see ``seed_gaps``): per group the mean over its seeds at the token counts they
    share, with a min-max band when there are several."""
    result = []
    for name, gaps in seed_gaps(runs).items():
        tokens, mean, low, high = _band(list(gaps.values())) if gaps else ([], [], [], [])
        if tokens:  # seeds evaluated at different token counts (variable BPTT) may share none
            several = len(gaps) > 1
            label = f"{name} (mean of {len(gaps)} seeds, band: min-max)" if several else name
            result.append((label, tokens, mean, low, high) if several else (label, tokens, mean))
    return result


def gap_table(runs: list[Run], columns: int = 6) -> str | None:
    """The gap plot in numbers: each seed's gap (``seed_gaps``) at up to ``columns`` token counts that every
    curve logged, spread evenly from the first to the last; None when there is nothing to show."""
    per_group = {name: gaps for name, gaps in seed_gaps(runs).items() if gaps}
    curves = [set(gap) for gaps in per_group.values() for gap in gaps.values()]
    shared = sorted(set.intersection(*curves)) if curves else []
    if not shared:
        return None
    if len(shared) > columns:  # the counts nearest to evenly spaced ones (evaluations need not be evenly spaced)
        step = (shared[-1] - shared[0]) / (columns - 1)
        shared = sorted({min(shared, key=lambda t: abs(t - shared[0] - i * step)) for i in range(columns)})
    summary = _baseline(list(groups(runs).values()))[0].summary
    whole = summary.get("stop_reason") == "epochs" and summary.get("epochs")  # then tokens per epoch are known

    def when(tokens: int) -> str:
        epochs = f" ({tokens * summary['epochs'] / summary['tokens']:.2f} ep)" if whole else ""
        return f"{_count(tokens)} tok{epochs}"

    lines = [f"| group | seeds | {' | '.join(when(t) for t in shared)} |", "|" + "---|" * (len(shared) + 2)]
    for name, gaps in per_group.items():
        cells = ["/".join(f"{gap[t]:+.1f}" for gap in gaps.values()) + "%" for t in shared]
        lines.append(f"| {name} | {', '.join(map(str, gaps))} | {' | '.join(cells)} |")
    return "\n".join(lines + ["", "Validation perplexity against the learned tied run of the same seed as training "
                                "goes on (the gap plot's numbers), one value per seed (seed order as listed)."]) + "\n"


# The gap plot is linear within +-_GAP_LINEAR % and logarithmic beyond, so a variant 5x worse (Hadamard on
# a Transformer) does not flatten 10% gaps into the zero line; these are its ticks (each shown when in range).
_GAP_LINEAR = 50.0
_GAP_TICKS = (-90, -75, -50, -25, -10, 0, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def gap_ticks(values: list[float]) -> list[float] | None:
    """Ticks for a gap axis that needs the symlog scale (some gap beyond +-_GAP_LINEAR %); None: linear."""
    low, high = min(values), max(values)
    if max(-low, high) <= _GAP_LINEAR:
        return None
    below = max([t for t in _GAP_TICKS if t <= low], default=_GAP_TICKS[0])
    above = min([t for t in _GAP_TICKS if t >= high], default=_GAP_TICKS[-1])
    return [t for t in _GAP_TICKS if below <= t <= above]


def _plot(out: Path, title: str, ylabel: str, series: list[tuple], scale: str = "linear") -> Path:
    """``scale``: linear, log (perplexities) or gap (changes in %, with a zero line; see ``gap_ticks``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for label, xs, ys, *band in series:  # band: (low, high) for a group of seeds
        line = ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)[0]
        if band:
            ax.fill_between(xs, *band, color=line.get_color(), alpha=0.2, linewidth=0)
    if scale == "log":  # log scale, plain numbers (not 4x10^2)
        ax.set_yscale("log")
        for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            formatter = ScalarFormatter()
            formatter.set_scientific(False)
            set_formatter(formatter)
    if scale == "gap":
        ax.axhline(0, color="black", linewidth=0.8)
        ticks = gap_ticks([v for _, _, ys, *band in series for v in (*ys, *(x for b in band for x in b))])
        if ticks:
            ax.set_yscale("symlog", linthresh=_GAP_LINEAR)
            ax.yaxis.set_major_locator(FixedLocator(ticks))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+g}" if v else "0"))
            ax.yaxis.set_minor_locator(FixedLocator([]))
            ylabel += f"\nlinear to ±{_GAP_LINEAR:g}, log beyond"
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.2M
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # beside the curves, never over them
    fig.tight_layout()
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


class CompareError(LmfixError):
    """Runs that cannot be compared as they are."""


def _measured_on(run: Run) -> dict[str, object]:
    """What a run's numbers were measured on beyond its config: the text (vocabulary fingerprint and split
    checksums: the same path may hold other text) and each evaluation's settings. Runs from before the
    summary recorded the text give a fixed matrix's vocabulary fingerprint, or nothing."""
    provenance = run.summary.get("provenance") or {}
    vocab = provenance.get("vocab_fingerprint") or (run.summary.get("embedding") or {}).get("vocab_fingerprint")
    values: dict[str, object] = {}
    if vocab:
        values["vocabulary"] = vocab[:16]
    if provenance.get("splits"):
        values["text"] = ", ".join(f"{split} {sha}" for split, sha in provenance["splits"].items())
    for split, e in run.evals.items():
        if isinstance(e, dict):
            stride = e.get("stride") or run.config.bptt  # evaluations from before --stride: windows of bptt
            values[f"{split} evaluation"] = f"batch {e.get('batch_size')}, stride {stride}, {e.get('tokens')} tokens"
    return values


def setting_differences(runs: list[Run]) -> dict[str, list[tuple[str, object]]]:
    """{field: [(run name, value), ...]} for every setting outside ``MAY_DIFFER`` whose value is not shared,
    and for what the numbers were measured on (``_measured_on``)."""
    settings = []
    for run in runs:
        values = {k: v for k, v in run.config.to_dict().items() if k not in MAY_DIFFER}
        if not run.config.fixed:
            for key in HEAD_OPTIONS:
                values.pop(key)
        settings.append(values | _measured_on(run))
    differ = {}
    for key in sorted(set().union(*settings)) if settings else []:
        values = [(r.name, v[key]) for r, v in zip(runs, settings, strict=True) if key in v]
        if len({repr(value) for _, value in values}) > 1:
            differ[key] = values
    return differ


def _values(values: list[tuple[str, object]]) -> str:
    """``small 24, wide 32``; runs sharing a value are counted past the first two (a recipe has many runs)."""
    by_value: dict[str, list[str]] = {}
    for name, value in values:
        by_value.setdefault(repr(value), []).append(name)
    return ", ".join(" ".join([", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else ""),
                               value]) for value, names in by_value.items())


def _check_outputs(out_dir: Path, force: bool) -> None:
    """Files of compare's names in ``out_dir`` are replaced only if lmfix wrote them (a table that opens with
    its header, a PNG that matplotlib made), or with ``force``: not a user's own compare.md."""
    for name in (TABLE, VALID_PLOT, ALPHA_PLOT, GAP_PLOT, PARAMS_PLOT, TIME_PLOT):
        path = Path(out_dir) / name
        if force or not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(4096)
        ours = head.startswith(_HEADER.encode()) if name == TABLE else b"matplotlib" in head.lower()
        if not ours:
            raise CompareError(f"{path} exists and lmfix did not write it; pass --force to replace it, or choose "
                               "another --out")


def _distinct(run_dirs: list[Path]) -> None:
    """A run given twice would count twice in its group's mean and spread."""
    seen: dict[Path, Path] = {}
    for run in map(Path, run_dirs):
        if seen.setdefault(run.resolve(), run) is not run:
            raise CompareError(f"{run} is given twice (also as {seen[run.resolve()]}); name each run once")


def compare_runs(run_dirs: list[Path], out_dir: Path, mixed: bool = False,
                 frontier: bool = False, force: bool = False,
                 clock: Clock | None = None) -> tuple[str, list[Path]]:
    """Write ``compare.md`` and the plots into ``out_dir``; return the markdown and the PNG paths.

    Runs must share every setting but the matrix, the seeds and where they ran (``MAY_DIFFER``); with
    ``mixed`` they are compared anyway and the table says how they differ. ``frontier``: also the plots of
    test perplexity per trained parameter and per second, and the time-to-target table (``frontier``),
    timed on ``clock`` when it times every run. ``force``: replace files of the same names in ``out_dir``
    that lmfix did not write.
    """
    _distinct(run_dirs)
    _check_outputs(out_dir, force)
    runs = [load_run(d) for d in run_dirs]
    differ = setting_differences(runs)
    described = "; ".join(f"{key}: {_values(values)}" for key, values in differ.items())
    if differ and not mixed:
        raise CompareError(f"these runs differ in {', '.join(differ)} ({described}), so their perplexities "
                           "answer different questions; compare runs of one setting, or pass --mixed")
    table = markdown_table(runs)
    grouped = groups(runs)
    targets = time_to_target(grouped, _baseline(list(grouped.values())) or [], clock) if frontier else None
    for extra in (seeds_table(runs), precision_table(runs), gap_table(runs), targets):
        if extra:
            table += "\n" + extra
    if differ:
        table += f"\nWarning: these runs differ in more than the matrix and the seeds: {described}.\n"
    out_dir = Path(out_dir)

    def series(key: str, runs_: list[Run]):
        """One curve per run; a group of seeds is one mean curve with a min-max band."""
        result = []
        for name, members in groups(runs_).items():
            if len(members) > 1:
                tokens, mean, low, high = _band([_curve(r, key) for r in members])
                if tokens:
                    result.append((f"{name} (mean of {len(members)} seeds, band: min-max)", tokens, mean, low, high))
                continue
            run = members[0]
            curve = _curve(run, key)
            if curve:
                label = run.name if run.name == variant(run) else f"{run.name} ({variant(run)})"
                result.append((label, list(curve), list(curve.values())))
        return result

    plots = [_plot(out_dir / VALID_PLOT, "Validation perplexity", "valid perplexity", series("valid_ppl", runs), "log")]
    fixed = [r for r in runs if r.config.embed in FIXED]
    alpha = series("alpha", fixed)
    if alpha:
        plots.append(_plot(out_dir / ALPHA_PLOT, "Learned scale alpha of the fixed classifier", "alpha", alpha))
    gaps = gap_series(runs)
    if gaps:
        plots.append(_plot(out_dir / GAP_PLOT, "Validation perplexity against the learned tied run (same seed)",
                           "change in valid perplexity (%)", gaps, "gap"))
    if frontier:
        plots += frontier_plots(runs, out_dir, clock)
    atomic.write_text(out_dir / TABLE, table)  # last: a failed plot leaves the previous table with its plots
    return table, plots
