#!/usr/bin/env bash
# An arm64 Debian userland to run Python under QEMU without chroot or binfmt: Debian's arm64
# packages of python3.11, numpy and their libraries, downloaded with apt and unpacked (no
# maintainer scripts run, so the BLAS alternatives are linked by hand).
#
#   tools/arm64_root.sh DIR        # needs root (dpkg --add-architecture, apt-get download)
set -euo pipefail
DIR=${1:?usage: tools/arm64_root.sh DIR}
[ -x "$DIR/usr/bin/python3.11" ] && { echo "$DIR: ready"; exit 0; }
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq
DEBS=$(mktemp -d)
trap 'rm -rf "$DEBS"' EXIT
pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
         --no-replaces --no-enhances --no-pre-depends python3.11-minimal:arm64 \
         libpython3.11-stdlib:arm64 libpython3.11-dev:arm64 python3-numpy:arm64 libgomp1:arm64 \
         libstdc++6:arm64 2>/dev/null |
       grep -E '^[a-z0-9].*:arm64$' | sort -u |
       grep -vE '^(dpkg|tar|install-info|libatlas3-base|libblis4-.*|libopenblas0-.*):' || true)
(cd "$DEBS" && apt-get download $pkgs >/dev/null 2>&1 || (cd "$DEBS" && for p in $pkgs; do apt-get download "$p" >/dev/null 2>&1 || echo "skipped $p"; done))
mkdir -p "$DIR"
for d in "$DEBS"/*.deb; do dpkg -x "$d" "$DIR"; done
lib=$DIR/usr/lib/aarch64-linux-gnu
ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
echo "$DIR: $(ls "$DEBS" | wc -l) packages unpacked"
