#!/usr/bin/env bash
# Installs a CRIU that works on this kernel: Debian 12's 3.17 fails on the vvar_vclock mapping
# (fixed in 4.1), and 4.1 cannot dump a TCP socket on Linux >= 6.16 (SO_PASSCRED is refused
# there; fixed in 4.2). Debian unstable ships 4.2's source; its binary needs a newer libc, so we
# build the source with Debian 12's own build dependencies. The system's apt sources are left
# untouched: the newer suite is read through a private sources list and lists directory.
set -euo pipefail
PREFIX=/usr/local/sbin
MIN_VERSION=4.2
SUITE=${CRIU_SOURCE_SUITE:-sid}
installed=$($PREFIX/criu --version 2>/dev/null | awk '/^Version:/{print $2}') || true
if [[ -n $installed ]] && [[ $(printf '%s\n%s\n' "$MIN_VERSION" "$installed" | sort -V | head -n1) == "$MIN_VERSION" ]] \
  && $PREFIX/criu check >/dev/null 2>&1; then
  exit 0
fi

BUILD_DEPS=(build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
  protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev
  libnftables-dev libgnutls28-dev libaio-dev uuid-dev iptables xz-utils)
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

WORK=/var/cache/atoll/criu-build
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)}
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" > "$WORK/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache="$WORK/apt/cache")
apt-get "${APT[@]}" update -qq
cd "$WORK"
rm -rf src && mkdir src && cd src
apt-get "${APT[@]}" source --download-only criu >/dev/null 2>&1 || true
tarball=$(ls criu_*.orig.tar.* 2>/dev/null | head -n 1)
[[ -n $tarball ]] || { echo "setup-criu: could not download the criu source" >&2; exit 1; }
tar -xf "$tarball"
dir=$(find . -maxdepth 1 -type d -name 'criu-*' | head -n 1)
make -C "$dir" -j"$(nproc)" criu >build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
install -m755 "$dir/criu/criu" "$PREFIX/criu"
"$PREFIX/criu" check
