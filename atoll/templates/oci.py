"""Templates from container images: ``skopeo copy`` fetches the image into a private OCI layout,
``umoci raw unpack`` turns its layers into a root filesystem, and the image's config becomes the
template's settings: entrypoint + cmd as the sandbox's main process, env, ``PORT``, working dir
and user.

Sources: ``docker://REF`` (or a bare ``REF`` such as ``docker.io/library/python:3.12-slim``)
from a registry, optionally with basic credentials; and, for offline hosts, local files under
the server's import directories only (``oci-archive:PATH[:TAG]``, ``docker-archive:PATH``,
``oci:DIR[:TAG]``, ``dir:DIR``), so an API user can never make the server read an arbitrary host
path. Everything is built in ``<dest>.importing`` and renamed into place at the end, so a crash
never leaves a half-made template that looks finished.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atoll._exceptions import ImageRejected, TemplateFailure
from atoll.runtime.commands import CommandFailed, CommandTimeout
from atoll.runtime.confined import Root
from atoll.templates import image_user
from atoll.templates.import_guard import ImportGuard
from atoll.templates.registry import Template

log = logging.getLogger("atoll.templates")

Progress = Callable[[str, str], None]  # (phase, message)
LOCAL_TRANSPORTS = ("oci-archive:", "docker-archive:", "oci:", "dir:")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
POLICY = Path("/etc/containers/policy.json")
DEFAULT_PORT = 8080
RESOLVE_TIMEOUT_S = 10.0
TAG = "atoll"
# the runtime bind-mounts its own files over these: they must be plain files in the image
BIND_TARGETS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: list[str] | None
    cmd: list[str] | None
    working_dir: str
    user: str
    env: dict[str, str]
    port: int

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("port")
        return data

    @classmethod
    def from_image(cls, config: Mapping[str, Any]) -> ImageConfig:
        inner = config.get("config") or {}
        env: dict[str, str] = {}
        for item in inner.get("Env") or []:
            key, sep, value = str(item).partition("=")
            if sep and key:
                env[key] = value
        return cls(
            entrypoint=[str(a) for a in inner["Entrypoint"]] if inner.get("Entrypoint") else None,
            cmd=[str(a) for a in inner["Cmd"]] if inner.get("Cmd") else None,
            working_dir=str(inner.get("WorkingDir") or ""),
            user=str(inner.get("User") or ""),
            env=env,
            port=_port(env, inner.get("ExposedPorts") or {}),
        )

    @property
    def main_command(self) -> list[str]:
        return [*(self.entrypoint or []), *(self.cmd or [])]


def _port(env: Mapping[str, str], exposed: Mapping[str, Any]) -> int:
    """``PORT`` from the image's env, else its first exposed TCP port, else 8080."""
    with contextlib.suppress(ValueError):
        port = int(env.get("PORT", ""))
        if 1 <= port <= 65535:
            return port
    for spec in sorted(exposed):
        number, _, proto = spec.partition("/")
        if proto in ("", "tcp") and number.isdigit() and 1 <= int(number) <= 65535:
            return int(number)
    return DEFAULT_PORT


def source_ref(uri: str, import_dirs: Sequence[Path]) -> tuple[str, bool]:
    """The skopeo source for ``uri`` and whether it is a registry (credentials apply)."""
    uri = uri.strip()
    for transport in LOCAL_TRANSPORTS:
        if uri.startswith(transport):
            path, reference = _split_local(uri[len(transport) :])
            return transport + str(_allowed_path(path, import_dirs)) + (
                f":{reference}" if reference else ""
            ), False
    if uri.startswith("docker://"):
        reference = uri[len("docker://") :]
    elif "://" in uri or uri.split(":", 1)[0] in ("containers-storage", "docker-daemon", "ostree", "sif"):
        raise ImageRejected(
            "unsupported image source",
            errors=[{"field": "uri", "error": "use docker://, a registry reference, or a local archive"}],
        )
    else:
        reference = uri
    if not _REFERENCE.match(reference):
        raise ImageRejected(
            "invalid image reference", errors=[{"field": "uri", "error": f"{reference!r} is not a reference"}]
        )
    return "docker://" + reference, True


def _split_local(rest: str) -> tuple[str, str]:
    """``PATH[:REFERENCE]`` (a tag, or ``name:tag`` in a docker archive); the path is the
    shortest prefix that exists, so a path holding a ':' still works."""
    for index, char in enumerate(rest):
        if char == ":" and Path(rest[:index]).exists():
            return rest[:index], rest[index + 1 :]
    return rest, ""


def _allowed_path(raw: str, import_dirs: Sequence[Path]) -> Path:
    if not import_dirs:
        raise _uri_error("local image sources are disabled on this server", "no import directory")
    path = Path(raw).resolve()
    for base in import_dirs:
        if path.is_relative_to(base.resolve()):
            if not path.exists():
                raise _uri_error(f"{raw}: no such file or directory", "no such file or directory")
            return path
    allowed = ", ".join(str(d) for d in import_dirs)
    raise ImageRejected(
        "local image source outside the import directories",
        errors=[{"field": "uri", "error": f"local sources must be under {allowed}"}],
    )


def _uri_error(message: str, error: str) -> ImageRejected:
    return ImageRejected(message, errors=[{"field": "uri", "error": error}])


def _split_host_port(host: str) -> str:
    """The host name or address of ``host[:port]`` (``[v6]:port`` too)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _registry_names(host: str) -> list[str]:
    # docker.io's API lives on registry-1.docker.io (its tokens come from auth.docker.io)
    return ["registry-1.docker.io", "auth.docker.io"] if host == "docker.io" else [_split_host_port(host)]


def _unroutable(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _resolve(name: str) -> list[str]:
    try:
        ipaddress.ip_address(name)
        return [name]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


async def check_source(uri: str, import_dirs: Sequence[Path], registries: Sequence[str]) -> None:
    """Refuse, before anything connects anywhere, a registry the server must not contact: one
    outside the operator's list (``registries``, host[:port]; empty: any), or, unless the operator
    listed it, one whose name resolves to a loopback, private, link-local or otherwise
    non-public address (a tenant must not point the server at its own network). An unqualified
    name means docker.io, so it too is refused when docker.io is not listed."""
    source, remote = source_ref(uri, import_dirs)
    if not remote:
        return
    host = registry_host(source).lower()
    allowed = [r.strip().lower().removeprefix("https://").rstrip("/") for r in registries]
    if allowed and host not in allowed:
        raise _uri_error(
            f"registry {host} is not one this server imports from",
            f"allowed registries: {', '.join(allowed)}",
        )
    if host in allowed:  # the operator's own choice, wherever it lives
        return
    for name in _registry_names(host):
        try:
            addresses = await asyncio.wait_for(asyncio.to_thread(_resolve, name), RESOLVE_TIMEOUT_S)
        except TimeoutError:
            addresses = []
        if not addresses:
            raise _uri_error(f"registry {name} does not resolve", f"{name}: no address")
        bad = [a for a in addresses if _unroutable(a)]
        if bad:
            raise _uri_error(
                f"registry {name} is on a non-public address ({bad[0]})",
                "registries on loopback, private or link-local addresses need the operator's "
                "--template-registry",
            )


def registry_host(reference: str) -> str:
    first = reference.removeprefix("docker://").split("/", 1)[0]
    if "/" in reference.removeprefix("docker://") and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _authfile(path: Path, registry: str, username: str, password: str) -> Path:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths = {registry: {"auth": token}}
    if registry == "docker.io":
        auths["https://index.docker.io/v1/"] = {"auth": token}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": auths}, f)
    return path


async def _run_lines(
    argv: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> None:
    """Run a host command, handing each output line to ``on_line``; CommandFailed on failure.
    (``atoll.runtime.commands.run`` collects output at the end; progress needs it as it comes.)"""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        pass_fds=tuple(pass_fds),
    )
    assert proc.stdout is not None
    tail: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line:
                tail[:] = [*tail[-20:], line]
                on_line(line)

    try:
        await asyncio.wait_for(asyncio.gather(pump(), proc.wait()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandTimeout(argv, timeout) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    log.debug("%s rc=%s %.1fms", argv[0], proc.returncode, (time.perf_counter() - started) * 1000)
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode or -1, "\n".join(tail).encode())


async def _resolve_async(name: str) -> list[str]:
    return await asyncio.wait_for(asyncio.to_thread(_resolve, name), RESOLVE_TIMEOUT_S)


async def _pull(
    argv: list[str], *, remote: bool, registries: Sequence[str], timeout: float, report: Progress
) -> None:
    """Run skopeo; from a registry, only through an ``ImportGuard`` that checks every address it
    connects to (redirects, token services, a name that resolves differently the second time)."""
    on_line: Callable[[str], None] = lambda line: report("pull", line)  # noqa: E731
    if not remote:
        await _run_lines(argv, timeout=timeout, on_line=on_line)
        return
    guard = ImportGuard(allowed=registries, refuse=_unroutable, resolve=_resolve_async)
    async with guard:
        wrapped, env, fds = guard.wrap(argv)
        try:
            await _run_lines(wrapped, timeout=timeout, on_line=on_line, env=env, pass_fds=fds)
        except CommandFailed:
            if guard.refused:
                raise _uri_error(
                    f"the registry led the import where this server does not connect: {guard.refused[0]}",
                    "registries and their redirects must be on public addresses",
                ) from None
            raise


def _read_layout(layout: Path) -> tuple[str, dict[str, Any]]:
    """(manifest digest, image config) of the one image in an OCI layout."""

    def blob(digest: str) -> dict[str, Any]:
        algorithm, _, hexdigest = digest.partition(":")
        if not re.fullmatch(r"[a-z0-9]+", algorithm) or not re.fullmatch(r"[a-f0-9]+", hexdigest):
            raise TemplateFailure(f"malformed digest {digest!r} in the image")
        data: dict[str, Any] = json.loads((layout / "blobs" / algorithm / hexdigest).read_bytes())
        return data

    index = json.loads((layout / "index.json").read_bytes())
    manifests = index.get("manifests") or []
    if not manifests:
        raise ImageRejected("the image has no manifest")
    digest = str(manifests[0]["digest"])
    manifest = blob(digest)
    return digest, blob(str(manifest["config"]["digest"]))


def _prepare_rootfs(rootfs: Path) -> None:
    """Make the bind-mount targets plain files, working inside the new root only (an image may
    hold links such as ``/etc -> /`` that must never lead to the host's files)."""
    rootfs.chmod(0o755)
    with Root.open(str(rootfs), require_mount=False) as root:
        root.makedirs("/etc")
        for target in BIND_TARGETS:
            try:
                info = root.lstat(target)
            except FileNotFoundError:
                info = None
            if info is not None and not stat.S_ISREG(info.st_mode):
                with root.parent(target) as (fd, name):
                    if stat.S_ISDIR(info.st_mode):
                        shutil.rmtree(name, dir_fd=fd)
                    else:
                        os.unlink(name, dir_fd=fd)
            os.close(root.open_regular(target, os.O_WRONLY | os.O_CREAT, 0o644))


async def import_image(
    *,
    uri: str,
    credentials: tuple[str, str] | None,
    template_id: str,
    name: str,
    dest: Path,
    import_dirs: Sequence[Path],
    timeout: float,
    registries: Sequence[str] = (),
    on_progress: Progress | None = None,
) -> tuple[str, ImageConfig]:
    """Import ``uri`` as template ``template_id`` into ``dest``; returns (digest, image config)."""
    report = on_progress or (lambda phase, message: None)
    await check_source(uri, import_dirs, registries)
    source, remote = source_ref(uri, import_dirs)
    staging = dest.with_name(dest.name + ".importing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    deadline = time.monotonic() + timeout
    try:
        # no policy file (containers-common missing): accept any image, as the default policy does
        argv = ["skopeo", *([] if POLICY.exists() else ["--insecure-policy"]), "copy", "--retry-times", "2"]
        if credentials is not None and remote:
            argv += [
                "--src-authfile",
                str(_authfile(staging / "auth.json", registry_host(source), *credentials)),
            ]
        argv += [source, f"oci:{staging / 'layout'}:{TAG}"]
        report("pull", f"pulling {uri}")
        await _pull(argv, remote=remote, registries=registries, timeout=timeout, report=report)
        with contextlib.suppress(FileNotFoundError):
            (staging / "auth.json").unlink()
        digest, config = await asyncio.to_thread(_read_layout, staging / "layout")
        image = ImageConfig.from_image(config)
        report("unpack", f"unpacking {digest}")
        await _run_lines(
            ["umoci", "raw", "unpack", "--image", f"{staging / 'layout'}:{TAG}", str(staging / "rootfs")],
            timeout=max(deadline - time.monotonic(), 1.0),
            on_line=lambda line: report("unpack", line),
        )
        try:
            await asyncio.to_thread(_prepare_rootfs, staging / "rootfs")
        except OSError as exc:
            raise ImageRejected(f"the image's root filesystem is unusable here: {exc.strerror}") from None
        user = await asyncio.to_thread(image_user.resolve, staging / "rootfs", image.user)
        await asyncio.to_thread(shutil.rmtree, staging / "layout")
        template = Template(
            id=template_id,
            name=name,
            port=image.port,
            # HOME is the user's, as a container engine sets it, unless the image says otherwise
            env={"HOME": user.home, **image.env} if user.uid else image.env,
            workdir=image.working_dir or "/",
            cmd=image.main_command,
            user=image.user,
            uid=user.uid,
            gid=user.gid,
            groups=user.groups,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        meta = asdict(template)
        meta.pop("path")
        meta.update(uri=uri, digest=digest)
        (staging / "template.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
        report("done", f"template {name} ready ({digest})")
        return digest, image
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, staging, True)
        raise
