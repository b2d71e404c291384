"""The run directory: what may be created, reused or replaced on disk before a run starts."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lmfix.errors import LmfixError
from lmfix.training.config import CONFIG_FILE, ConfigError


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse a run name (unless ``overwrite``) and fail early if the directory is unwritable."""
    if run_dir.exists() and not overwrite and ((run_dir / CONFIG_FILE).exists() or any(run_dir.iterdir())):
        raise ConfigError(
            f"{run_dir} already exists: continue it with --resume {run_dir}, replace it with --overwrite, "
            f"or pick another --name"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test"):
            pass
    except OSError as exc:
        raise LmfixError(f"cannot write to run directory {run_dir}: {exc.strerror}; choose another --runs-dir") from exc
