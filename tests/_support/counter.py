"""A process that keeps a counter in memory, for tests that pause, checkpoint or fork a sandbox.

It ticks ten times a second, writing the count to /tmp/counter and appending it to
/root/ticks.log (a file it holds open). The count file is replaced whole: a reader between a
truncate and a write would see it empty. The start script returns once the first value is
there, since a loaded host can take seconds to start Python."""

from __future__ import annotations

import httpx

from tests._support import api

START = """
cat > /root/counter.py <<'PY'
import os, time
log = open("/root/ticks.log", "a", buffering=1)
n = 0
while True:
    n += 1
    with open("/tmp/counter.next", "w") as f:
        f.write(str(n))
    os.replace("/tmp/counter.next", "/tmp/counter")
    log.write(f"{n}\\n")
    time.sleep(0.1)
PY
nohup python3 /root/counter.py >/dev/null 2>&1 &
for _ in $(seq 300); do [ -s /tmp/counter ] && break; sleep 0.1; done
"""

READ = "cat /tmp/counter"


def read(http: httpx.Client, sid: str) -> int:
    return int(api.run(http, sid, READ)["stdout"])
