"""Small OCI images for template tests, built with ``umoci`` from the host's static busybox (no
registry involved): busybox, a web root, an ``app`` user, and busybox httpd serving ``/www`` on
``PORT`` 8080 as the image's entrypoint + cmd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

APPLETS = ("sh", "httpd", "cat", "echo", "ls", "awk", "sleep", "id", "ps", "stty", "tty", "env")


def sh(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=120)


def build_image(work: Path, *, tag: str = "latest", user: str = "app") -> Path:
    """An OCI layout: busybox, a web root, an ``app`` user (uid 1000, in the ``staff`` group too),
    and httpd on $PORT as entrypoint+cmd; the image's ``USER`` is ``user``."""
    layout = work / "layout"
    rootfs = work / "rootfs"
    for d in ("bin", "www", "etc", "home/app"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www" / "index.html").write_text("hello from an OCI template\n")
    os.chown(rootfs / "home" / "app", 1000, 1000)  # the user's own home, as in a real image
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app\n")
    # an image may carry links that point at host paths; they must stay inside the template
    (rootfs / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{tag}")
    sh("umoci", "insert", "--image", f"{layout}:{tag}", rootfs, "/")
    sh(
        "umoci", "config", "--image", f"{layout}:{tag}",
        "--config.env", "PORT=8080", "--config.env", "GREETING=hi",
        "--config.entrypoint", "/bin/httpd",
        *[a for c in ("-f", "-p", "8080", "-h", "/www") for a in ("--config.cmd", c)],
        "--config.workingdir", "/www", "--config.user", user,
        "--config.exposedports", "8080/tcp",
    )  # fmt: skip
    return layout
