#!/bin/sh
# OpenSSH's sshd for bench/dev_services.py's baseline only (the bench runs its own daemon on a
# loopback port). Debian's postinst would start the system's sshd on port 22: a policy-rc.d
# refuses that for the length of the install (one already present is left as it is).
set -eu
created=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created=1
fi
rc=0
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server || rc=$?
[ -n "$created" ] && rm -f /usr/sbin/policy-rc.d
exit "$rc"
