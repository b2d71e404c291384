"""What a run directory holds, and how each file is written (atomically) and read back (safely).

``runs/NAME/``: ``config.toml`` (the TrainConfig), ``checkpoint.pt`` (latest
full state, for ``--resume``), ``best.pt`` (weights with the best validation
loss, for evaluate/generate), ``metrics.jsonl`` (one JSON object per line),
``summary.json`` (end of training), ``eval.json`` (``lmfix evaluate``).
Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``; a frozen E is never in them (runs cite its artifact id).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

import torch

from lmfix import atomic
from lmfix.errors import LmfixError, first_line

FORMAT = 1
LAST = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"


class CheckpointError(LmfixError):
    """A checkpoint or run file is missing, corrupt or from an incompatible version."""


def save(path: Path, state: dict) -> None:
    """Write ``state`` so that ``path`` is either the old file or the complete new one."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic.write_bytes(path, buffer.getbuffer())


def load(path: Path) -> dict:
    """Read a checkpoint with the safe unpickler; any damage becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train the run first (lmfix train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong magic, pickled objects: all mean "unusable"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({first_line(exc, 120)}); restore it, or delete the run and "
            f"train again (--overwrite)"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lmfix checkpoint of format {FORMAT}; train the run again")
    return state


def upgrade_weights(weights: dict) -> dict:
    """Weights saved before the body interface named the LSTM's layers ``layers.N.lstm.*``; now the body holds
    them: ``body.layers.N.rnn.*``. Newer names pass unchanged."""
    return {re.sub(r"^layers\.(\d+)\.lstm\.", r"body.layers.\1.rnn.", k): v for k, v in weights.items()}


def load_weights(model: torch.nn.Module, weights: dict, path: Path) -> None:
    """``model.load_state_dict`` (of weights in any saved naming) with a one-line error for weights of another
    shape (another run's file)."""
    try:
        model.load_state_dict(upgrade_weights(weights))
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit the model its run's config.toml describes ({first_line(exc)}); "
                              "it belongs to another run") from None


def json_text(data: dict) -> str:
    """How lmfix writes JSON files (records are compared byte for byte)."""
    return json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n"


def write_json(path: Path, data: dict) -> None:
    atomic.write_text(path, json_text(data))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); delete it and rerun the command that writes it") from exc


def _json_default(value):
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def clean(value: float | None) -> float | None:
    """JSON has no NaN/inf: store None instead."""
    return value if value is not None and math.isfinite(value) else None


class MetricsLog:
    """``metrics.jsonl``: one line per log step; each line is appended in one write."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            raise LmfixError(f"cannot write {self.path}: {exc.strerror} (check free disk space)") from exc

    def read(self) -> list[dict]:
        """All complete records (a torn last line from a killed run is skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (written by a run killed after its last checkpoint)."""
        kept = [r for r in self.read() if r["step"] <= step]
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
