"""Where a corpus's text comes from: manifests, directories, the hub, gensim's test data; checksums.

``resolve`` finds the train/valid/test files of a known corpus (manifests in
``corpora/``) or of any directory; ``verify_split`` checks them against the
manifest's checksums, so a prepared corpus is known to be the published text.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lmfix import atomic
from lmfix.errors import CorpusError, first_line

SPLITS = ("train", "valid", "test")
DEFAULT_FILES = {s: [f"{s}.txt", f"wiki.{s}.tokens", f"ptb.{s}.txt"] for s in SPLITS}
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = PACKAGE_ROOT / "corpora"


def cache_root() -> Path:
    """Where downloaded and prepared corpora live: ``$LMFIX_CACHE`` or ``corpora/``."""
    return Path(os.environ.get("LMFIX_CACHE") or MANIFEST_DIR)


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class SplitSpec:
    files: list[str]
    sha256: str = ""
    tokens_sha256: str = ""  # of the whitespace-normalised text: matches hub copies too
    lines: int | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    splits: dict[str, SplitSpec]
    hub: dict = field(default_factory=dict)
    gensim: dict = field(default_factory=dict)
    vocab_size: int | None = None
    description: str = ""


def known_corpora() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.toml"))


def load_manifest(name: str) -> Manifest | None:
    path = MANIFEST_DIR / f"{name}.toml"
    if not path.is_file():
        return None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return Manifest(
            name=raw["name"],
            splits={s: SplitSpec(**raw["splits"][s]) for s in SPLITS},
            hub=raw.get("hub", {}),
            gensim=raw.get("gensim", {}),
            vocab_size=raw.get("vocab_size"),
            description=raw.get("description", ""),
        )
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise CorpusError(f"corrupt manifest {path}: {exc}; restore it from git") from exc


# --------------------------------------------------------------------------- sources


def _split_files(directory: Path, manifest: Manifest | None) -> dict[str, Path] | None:
    """The train/valid/test files in ``directory``, or None if it holds none of them."""
    if not directory.is_dir():
        return None
    found: dict[str, Path] = {}
    for split in SPLITS:
        names = manifest.splits[split].files if manifest else DEFAULT_FILES[split]
        for name in names:
            if (directory / name).is_file():
                found[split] = directory / name
                break
    if not found:
        return None
    missing = [s for s in SPLITS if s not in found]
    if missing:
        names = manifest.splits[missing[0]].files if manifest else DEFAULT_FILES[missing[0]]
        raise CorpusError(
            f"{directory} has no {missing[0]} split: add one of {', '.join(names)}"
        )
    return found


def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached, checked in milliseconds (``datasets`` retries for ~25 s).

    With ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set, ``datasets`` reads its own local
    cache, so that is left to it.
    """
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"offline: cannot resolve {host}"
    return None


def download_from_hub(manifest: Manifest, dest: Path) -> dict[str, Path]:
    """Fetch the splits with ``datasets`` (one record per line) and cache them as text."""
    hub = manifest.hub
    reason = hub_offline_reason()
    if reason:
        raise CorpusError(reason)
    try:
        import datasets

        ds = datasets.load_dataset(hub["id"], hub["config"])
    except Exception as exc:  # offline, hub errors, missing package: all mean "not here"
        raise CorpusError(f"{type(exc).__name__}: {first_line(exc)}") from exc
    with atomic.atomic_dir(dest) as tmp:
        for split in SPLITS:
            records = ds[hub["splits"][split]][hub.get("text_field", "text")]
            name = manifest.splits[split].files[0]
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.writelines(r.rstrip("\n") + "\n" for r in records)
    return {s: dest / manifest.splits[s].files[0] for s in SPLITS}


def copy_from_gensim(manifest: Manifest, dest: Path) -> dict[str, Path]:
    """Cut the splits out of a file that gensim ships in its test data (offline smoke corpora)."""
    from gensim.test.utils import datapath

    with atomic.atomic_dir(dest) as tmp:
        for split in SPLITS:
            spec = manifest.gensim[split]
            raw = Path(datapath(spec["file"])).read_bytes()
            lines = raw.decode(spec.get("encoding", "utf-8")).splitlines()
            start, stop = spec.get("lines", [0, len(lines)])
            (tmp / manifest.splits[split].files[0]).write_text(
                "".join(line + "\n" for line in lines[start:stop]), encoding="utf-8"
            )
    return {s: dest / manifest.splits[s].files[0] for s in SPLITS}


def resolve(corpus: str, data_dir: str | os.PathLike | None = None) -> tuple[str, dict[str, Path], Manifest | None]:
    """Find the split files of ``corpus`` (a known name or a directory).

    Order for a known name: ``data_dir``, ``$LMFIX_CORPORA/NAME``, the cache
    ``corpora/NAME/``, then the Hugging Face hub or, for the smoke corpus, gensim's
    test data (either written into the cache).
    """
    manifest = load_manifest(corpus)
    if manifest is None:
        path = Path(data_dir or corpus)
        files = _split_files(path, None)
        if files is None:
            known = ", ".join(known_corpora())
            raise CorpusError(
                f"corpus {corpus!r} not found: it is neither a known corpus ({known}) nor a "
                f"directory holding train.txt/valid.txt/test.txt"
            )
        return path.resolve().name, files, None

    looked: list[str] = []
    candidates: list[tuple[str, Path | None]] = [
        ("--data-dir", Path(data_dir) if data_dir else None),
        ("$LMFIX_CORPORA", Path(os.environ["LMFIX_CORPORA"]) / corpus if os.environ.get("LMFIX_CORPORA") else None),
        ("cache", cache_root() / corpus),
    ]
    for label, path in candidates:
        if path is None:
            looked.append(f"{label} (not set)")
            continue
        files = _split_files(path, manifest)
        if files is not None:
            return corpus, files, manifest
        looked.append(f"{label} {path} (no split files)")
    if manifest.gensim:
        return corpus, copy_from_gensim(manifest, cache_root() / corpus), manifest
    if manifest.hub:
        try:
            return corpus, download_from_hub(manifest, cache_root() / corpus), manifest
        except CorpusError as exc:
            looked.append(f"hub {manifest.hub['id']}/{manifest.hub['config']} ({exc})")
    raise CorpusError(
        f"corpus {corpus!r} not found; looked in: {'; '.join(looked)}. Provide it with "
        f"--data-dir DIR (holding train.txt valid.txt test.txt), set LMFIX_CORPORA to a folder "
        f"containing {corpus}/, or go online so the datasets library can fetch it"
    )


# --------------------------------------------------------------------------- verification


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); convert it, "
            f"e.g. iconv -f latin1 -t utf-8"
        ) from exc


def file_checksums(text: str, raw: bytes) -> tuple[str, str]:
    """(sha256 of the bytes, sha256 of the whitespace-normalised lines)."""
    norm = "\n".join(" ".join(line.split()) for line in text.splitlines())
    return hashlib.sha256(raw).hexdigest(), hashlib.sha256(norm.encode("utf-8")).hexdigest()


def verify_split(split: str, path: Path, text: str, spec: SplitSpec | None, verify: bool) -> bool:
    """True when ``text`` matched a checksum of the manifest; a mismatch is an error unless not ``verify``."""
    if spec is None:
        return False
    if not (spec.sha256 or spec.tokens_sha256):
        warnings.warn(f"no checksum for {split} in the manifest: {path} not verified", stacklevel=3)
        return False
    sha, tok_sha = file_checksums(text, path.read_bytes())
    if sha == spec.sha256 or tok_sha == spec.tokens_sha256:
        return True
    if verify:
        raise CorpusError(
            f"checksum mismatch for {path} (sha256 {sha[:12]}..., expected {spec.sha256[:12]}...): "
            f"the file is corrupt or a different version; re-download it, or pass --no-verify"
        )
    warnings.warn(f"checksum mismatch for {path} accepted because of --no-verify", stacklevel=3)
    return False


