"""Puts llama.cpp's tokenizer test vectors where tests/test_tokenizer_llamacpp.py finds them.

llama.cpp tests its tokenizers on `models/ggml-vocab-*.gguf` (vocabulary-only GGUF files of
real models) with `.inp` (test strings) and `.out` (the ids Hugging Face tokenizers gives)
files, run by its tests/test-tokenizer-0. They ship inside the llama-cpp-python sdist, which
pip downloads without building anything:

    python tools/fetch_llamacpp_vocabs.py      # into <kernelgpt cache>/llama.cpp-vocabs-0.3.36

Only files whose name starts with ggml-vocab- are extracted (about 75 MB).
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
import tarfile
import tempfile

VERSION = "0.3.36"


def target() -> pathlib.Path:
    from kernelgpt.io import fetch
    return fetch.cache_dir() / f"llama.cpp-vocabs-{VERSION}"


def main() -> int:
    out = target()
    if (out / "ggml-vocab-gpt-2.gguf.out").is_file():
        print(f"already in {out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="kernelgpt-llamacpp-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-build-isolation", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
        sdist, = pathlib.Path(tmp).glob("llama_cpp_python-*.tar.gz")
        part = out.with_name(out.name + ".part")
        part.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                name = pathlib.PurePosixPath(member.name).name
                if member.isfile() and "/models/" in member.name and name.startswith("ggml-vocab-"):
                    data = archive.extractfile(member).read()
                    (part / name).write_bytes(data)
        if out.exists():
            import shutil
            shutil.rmtree(out)
        part.rename(out)
    print(f"llama.cpp's tokenizer test vectors in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
