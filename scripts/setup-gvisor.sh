#!/usr/bin/env bash
# Installs gVisor's runsc for Atoll's `runsc` backend (optional: the OCI backends do not need it).
# Debian 12's own runsc (2022) only has the slow ptrace platform; Debian trixie's package is a
# static Go binary with the systrap platform that runs on Debian 12. It is fetched with
# `apt-get download` through a private sources list, lists and cache directory, so the system's
# apt sources are left untouched, and only the binary is installed (no dpkg database entry).
# Idempotent: nothing is fetched when the wanted version is already installed.
set -euo pipefail
TARGET=${RUNSC_TARGET:-/usr/local/bin/runsc}
SUITE=${RUNSC_SOURCE_SUITE:-trixie}
VERSION=${RUNSC_VERSION:-0.0~20240729.0-4+b7}
WANT=${VERSION%%-*}  # what the binary reports: "runsc version 0.0~20240729.0"

# no pipes into grep -q / head here: with pipefail, runsc's SIGPIPE would fail the script
if [[ -x $TARGET ]] && [[ $("$TARGET" --version 2>/dev/null || true) == *"runsc version $WANT"* ]]; then
  exit 0
fi

WORK=/var/cache/atoll/gvisor
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" > "$WORK/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache="$WORK/apt/cache" -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update -qq
rm -rf "$WORK/deb" && mkdir -p "$WORK/deb"
(cd "$WORK/deb" && apt-get "${APT[@]}" download "runsc=$VERSION" >/dev/null)
dpkg-deb -x "$WORK"/deb/runsc_*.deb "$WORK/deb/x"
install -m755 "$WORK/deb/x/usr/bin/runsc" "$TARGET"
rm -rf "$WORK/deb"
version=$("$TARGET" --version)
echo "${version%%$'\n'*}"
