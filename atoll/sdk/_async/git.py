"""``sandbox.git``: git inside a sandbox (agent-services §2), run by the server in the sandbox.

Every call answers ``GitResult(output, exit_code)`` as git printed it: a failing git command
(not a repository, a refused password, a merge conflict) is a non-zero ``exit_code``, not an
exception. ``username``/``password`` of ``clone``/``push``/``pull`` are used for that call only;
they are never written inside the sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atoll._exceptions import MalformedResponseError
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._validation import sandbox_path
from atoll.sdk.models import SandboxRef, json_object

# clone, push and pull may take long: the server allows them 15 minutes
NETWORK_HTTP_TIMEOUT_S = 910.0


@dataclass(frozen=True)
class GitResult:
    output: str
    exit_code: int

    @classmethod
    def from_wire(cls, data: Any) -> GitResult:
        if not isinstance(data, dict) or not isinstance(data.get("exit_code"), int):
            raise MalformedResponseError(f"expected a git result, got {str(data)[:200]!r}")
        return cls(output=str(data.get("output", "")), exit_code=data["exit_code"])


@dataclass(frozen=True)
class GitCommitResult:
    sha: str | None  # None when the commit failed
    result: GitResult


def _body(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class AsyncGit:
    """The git operations of one sandbox; ``path`` is the repository (relative: to the workdir)."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxRef) -> None:
        self._transport = transport
        self._sandbox = sandbox

    async def _post(self, op: str, body: dict[str, Any], http_timeout: float | None) -> dict[str, Any]:
        response = await self._transport.request(
            "POST", sandbox_path(self._sandbox, f"/git/{op}"), json=body, timeout=http_timeout
        )
        return json_object(response.content)

    async def _run(self, op: str, body: dict[str, Any], http_timeout: float | None = None) -> GitResult:
        return GitResult.from_wire(await self._post(op, body, http_timeout))

    async def clone(
        self,
        url: str,
        path: str,
        *,
        branch: str | None = None,
        commit_id: str | None = None,
        depth: int | None = None,
        username: str | None = None,
        password: str | None = None,
        http_timeout: float | None = NETWORK_HTTP_TIMEOUT_S,
    ) -> GitResult:
        body = _body(url=url, path=path, branch=branch, commit_id=commit_id, depth=depth,
                     username=username, password=password)  # fmt: skip
        return await self._run("clone", body, http_timeout)

    async def status(self, path: str) -> GitResult:
        """``git status --porcelain=v2 --branch``."""
        return await self._run("status", {"path": path})

    async def reset(self, path: str) -> GitResult:
        """Unstage everything staged."""
        return await self._run("reset", {"path": path})

    async def branches(
        self,
        path: str,
        *,
        branch_type: str = "local",
        contains: str | None = None,
        not_contains: str | None = None,
    ) -> GitResult:
        body = _body(path=path, branch_type=branch_type, contains=contains, not_contains=not_contains)
        return await self._run("branches", body)

    async def diff_unstaged(self, path: str, *, context_lines: int | None = None) -> GitResult:
        return await self._run("diff-unstaged", _body(path=path, context_lines=context_lines))

    async def diff_staged(self, path: str, *, context_lines: int | None = None) -> GitResult:
        return await self._run("diff-staged", _body(path=path, context_lines=context_lines))

    async def diff(self, path: str, target: str, *, context_lines: int | None = None) -> GitResult:
        return await self._run("diff", _body(path=path, target=target, context_lines=context_lines))

    async def log(
        self,
        path: str,
        *,
        max_count: int | None = None,
        start_timestamp: str | None = None,
        end_timestamp: str | None = None,
    ) -> GitResult:
        body = _body(
            path=path, max_count=max_count, start_timestamp=start_timestamp, end_timestamp=end_timestamp
        )
        return await self._run("log", body)

    async def show(self, path: str, revision: str = "HEAD") -> GitResult:
        return await self._run("show", {"path": path, "revision": revision})

    async def create_branch(
        self, path: str, name: str, *, checkout: bool | None = None, base_branch: str | None = None
    ) -> GitResult:
        return await self._run(
            "create-branch", _body(path=path, name=name, checkout=checkout, base_branch=base_branch)
        )

    async def checkout_branch(self, path: str, branch: str, *, create: bool | None = None) -> GitResult:
        return await self._run("checkout-branch", _body(path=path, branch=branch, create=create))

    async def delete_branch(self, path: str, name: str, *, force: bool = False) -> GitResult:
        return await self._run("delete-branch", {"path": path, "name": name, "force": force})

    async def add(self, path: str, files: list[str]) -> GitResult:
        return await self._run("add", {"path": path, "files": list(files)})

    async def commit(
        self,
        path: str,
        message: str,
        *,
        author: str | None = None,
        email: str | None = None,
        allow_empty: bool | None = None,
    ) -> GitCommitResult:
        body = _body(path=path, message=message, author=author, email=email, allow_empty=allow_empty)
        data = await self._post("commit", body, None)
        sha = data.get("sha")
        return GitCommitResult(
            sha=sha if isinstance(sha, str) else None, result=GitResult.from_wire(data.get("result"))
        )

    async def push(
        self,
        path: str,
        *,
        remote: str | None = None,
        branch: str | None = None,
        set_upstream: bool | None = None,
        username: str | None = None,
        password: str | None = None,
        http_timeout: float | None = NETWORK_HTTP_TIMEOUT_S,
    ) -> GitResult:
        body = _body(path=path, remote=remote, branch=branch, set_upstream=set_upstream,
                     username=username, password=password)  # fmt: skip
        return await self._run("push", body, http_timeout)

    async def pull(
        self,
        path: str,
        *,
        remote: str | None = None,
        branch: str | None = None,
        rebase: bool | None = None,
        set_upstream: bool | None = None,
        username: str | None = None,
        password: str | None = None,
        http_timeout: float | None = NETWORK_HTTP_TIMEOUT_S,
    ) -> GitResult:
        body = _body(path=path, remote=remote, branch=branch, rebase=rebase, set_upstream=set_upstream,
                     username=username, password=password)  # fmt: skip
        return await self._run("pull", body, http_timeout)
