"""Where a corpus's text comes from: manifests, directories, the hub, gensim's test data; checksums.

``resolve`` finds the train/valid/test files of a known corpus (manifests in
``corpora/``) or of any directory; ``verify_split`` checks them against the
manifest's checksums, so a prepared corpus is known to be the published text.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tomllib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lmfix import atomic
from lmfix.errors import CorpusError, first_line

SPLITS = ("train", "valid", "test")
DEFAULT_FILES = {s: [f"{s}.txt", f"wiki.{s}.tokens", f"ptb.{s}.txt"] for s in SPLITS}
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = PACKAGE_ROOT / "corpora"


class CorpusNotFoundError(CorpusError):
    """A known corpus's text is nowhere lmfix looks: the one case where ids prepared before may stand in."""


def cache_root() -> Path:
    """Where downloaded and prepared corpora live: ``$LMFIX_CACHE`` or ``corpora/``."""
    return Path(os.environ.get("LMFIX_CACHE") or MANIFEST_DIR)


def split_lines(text: str) -> list[str]:
    r"""The lines of ``text`` as pytorch/examples and the manifests count them (one ``<eos>`` each): split at
    "\n" only, a trailing "\r" dropped; ``str.splitlines`` would also split at \x0b, \x0c, \x1c-\x1e, \x85,
    \u2028 and \u2029."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class SplitSpec:
    files: list[str]
    sha256: str = ""
    tokens_sha256: str = ""  # of the whitespace-normalised text: matches hub copies too
    lines: int | None = None
    tokens: int | None = None

    @property
    def checked(self) -> bool:
        """Whether the manifest has a checksum to verify this split against."""
        return bool(self.sha256 or self.tokens_sha256)


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


def _file_names(split: str, manifest: Manifest | None) -> list[str]:
    """The names a split's file may have: the manifest's, else the usual ones."""
    return manifest.splits[split].files if manifest else DEFAULT_FILES[split]


def _split_files(directory: Path, manifest: Manifest | None) -> dict[str, Path] | None:
    """The train/valid/test files in ``directory``, or None if it holds none of them."""
    if not directory.is_dir():
        return None
    found: dict[str, Path] = {}
    for split in SPLITS:
        for name in _file_names(split, manifest):
            if (directory / name).is_file():
                found[split] = directory / name
                break
    if not found:
        return None
    missing = [s for s in SPLITS if s not in found]
    if missing:
        raise CorpusError(
            f"{directory} has no {missing[0]} split: add one of {', '.join(_file_names(missing[0], manifest))}"
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


def _write_splits(manifest: Manifest, dest: Path, lines: dict[str, Iterable[str]]) -> dict[str, Path]:
    """Write each split's file into ``dest`` on its own, so what else is there (a user's files, prepared
    corpora) stays; none of the three appears before all are written."""
    files = {s: dest / manifest.splits[s].files[0] for s in SPLITS}
    with contextlib.ExitStack() as stack:
        for split in SPLITS:
            tmp = stack.enter_context(atomic.atomic_path(files[split]))
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines[split])
    return files


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
    text_field = hub.get("text_field", "text")
    records = {s: (r.rstrip("\n") for r in ds[hub["splits"][s]][text_field]) for s in SPLITS}
    return _write_splits(manifest, dest, records)


def copy_from_gensim(manifest: Manifest, dest: Path) -> dict[str, Path]:
    """Cut the splits out of a file that gensim ships in its test data (offline smoke corpora)."""
    from gensim.test.utils import datapath

    cuts = {}
    for split in SPLITS:
        spec = manifest.gensim[split]
        lines = split_lines(Path(datapath(spec["file"])).read_bytes().decode(spec.get("encoding", "utf-8")))
        start, stop = spec.get("lines", [0, len(lines)])
        cuts[split] = lines[start:stop]
    return _write_splits(manifest, dest, cuts)


def resolve(corpus: str, data_dir: str | os.PathLike | None = None) -> tuple[str, dict[str, Path], Manifest | None]:
    """Find the split files of ``corpus`` (a known name or a directory).

    A ``data_dir`` is the only place looked: a mistyped one must not quietly give
    other text. Without it, a known name is looked for in ``$LMFIX_CORPORA/NAME``,
    the cache ``corpora/NAME/``, then the Hugging Face hub or, for the smoke corpus,
    gensim's test data (either written into the cache); :class:`CorpusNotFoundError`
    when it is in none of them.
    """
    manifest = load_manifest(corpus)
    if data_dir:
        path = Path(data_dir)
        files = _split_files(path, manifest)
        if files is None:
            state = "holds no split files" if path.is_dir() else "is not a directory"
            wanted = "; ".join(" or ".join(_file_names(s, manifest)) for s in SPLITS)
            raise CorpusError(f"--data-dir {path} {state}: it needs one file per split ({wanted})")
        return (corpus if manifest else path.resolve().name), files, manifest
    if manifest is None:
        path = Path(corpus)
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
        ("$LMFIX_CORPORA", Path(os.environ["LMFIX_CORPORA"]) / corpus if os.environ.get("LMFIX_CORPORA") else None),
        ("cache", cache_root() / corpus),
    ]
    for label, path in candidates:
        if path is None:
            looked.append(f"{label} (not set)")
            continue
        try:
            files = _split_files(path, manifest)
        except CorpusError:  # some splits only: in the cache, a fetch that was killed between its files
            if label != "cache" or not (manifest.gensim or manifest.hub):
                raise
            files = None
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
    raise CorpusNotFoundError(
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
    norm = "\n".join(" ".join(line.split()) for line in split_lines(text))
    return hashlib.sha256(raw).hexdigest(), hashlib.sha256(norm.encode("utf-8")).hexdigest()


def verify_split(split: str, path: Path, text: str, spec: SplitSpec | None, verify: bool) -> bool:
    """True when ``text`` matched a checksum of the manifest; a mismatch is an error unless not ``verify``."""
    if spec is None:
        return False
    if not spec.checked:
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
