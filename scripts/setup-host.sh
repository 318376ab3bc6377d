#!/usr/bin/env bash
# Installs what Atoll needs on a Debian 12 host (as root) and prepares the kernel side.
# Idempotent: packages already present are not touched, and apt is not even updated then.
set -euo pipefail

PACKAGES=(
  crun runc               # OCI runtimes (crun: fast starts; runc: checkpointable)
  catatonit busybox-static  # static init and tools for Atoll's helper layer
  gcc libc6-dev           # builds the in-sandbox exec agent (atoll/runtime/agent.c), statically
  mmdebstrap              # builds the default Debian template
  skopeo umoci            # templates from container images: pull (registry or archive), unpack
  nftables iproute2 iptables  # host-side sandbox network rules, netns and veths
  python3-venv python3-dev  # the project's virtualenv
  libnss-myhostname       # *.localhost names resolve to loopback (sandbox URLs)
  wrk                     # load generator for bench/
  lxcfs                   # /proc/meminfo, cpuinfo, stat, uptime of a sandbox show its own limits
  ca-certificates
  chromium                # headless browser the browser tests drive with Playwright (never downloaded)
  ffmpeg                  # ffprobe reads the desktop's screen recordings (tests/services/test_desktop.py)
  openssh-client sshpass tmux  # the SSH gateway's tests drive the real OpenSSH client (tests/ssh)
  git                     # the git tests' server (git http-backend, tests/services/test_git.py)
  postgresql              # the cluster store's tests: each run starts its own throwaway server (initdb, no service)
)
missing=()
for pkg in "${PACKAGES[@]}"; do
  [[ $pkg == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# the code interpreter template's node_modules come from the host's `npm ci`; any Node.js with
# npm will do (Debian's, or NodeSource's, which ships npm inside its nodejs package)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# crun on a cgroup v1 host whose v2 hierarchy owns hugetlb: move hugetlb to v1 (once per boot)
if [[ ! -e /sys/fs/cgroup/cgroup.controllers ]] && ! mountpoint -q /sys/fs/cgroup/hugetlb; then
  mkdir -p /sys/fs/cgroup/hugetlb
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
fi
