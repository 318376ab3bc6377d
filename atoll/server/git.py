"""Git inside a sandbox (agent-services §2): the bodies of ``POST /v1/sandbox/{id}/git/<op>`` and
the shell script each one runs (``/bin/sh -c``, inside the sandbox, in its working directory).
Pure: building scripts here, running them in ``atoll.server.routes.git``.

Every value from a body reaches git as its own quoted argument, after a ``--`` or checked not
to start with ``-``, so no body can add an option to a git command.

Credentials (``clone``, ``push``, ``pull``) are never in the script, its arguments or its
environment. The script moves its stdin to fd 3 and gives git a credential helper that answers
``get`` with what it reads from fd 3; the server writes ``username=…\\npassword=…\\n`` to the
stdin pipe and closes it. Nothing is written to a file, ``.git/config`` or the credential store
(``credential.helper`` is reset for the call, so the sandbox's own helpers never see it), and
``GIT_TERMINAL_PROMPT=0`` makes a refused credential fail instead of waiting for a terminal."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from atoll.server.schemas import StrictInt, Text

GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat", "LC_ALL": "C.UTF-8"}
# answers git's "get" with the credential the server wrote to the script's stdin (now fd 3)
CREDENTIAL_HELPER = '!f() { test "$1" = get && cat <&3; }; f'
DEFAULT_LOG_COUNT = 10
DEFAULT_USERNAME = "x-access-token"  # a password-only (token) call: hosts accept any user name


def _not_option(value: str) -> str:
    if value.startswith("-"):
        raise ValueError("must not start with '-'")
    return value


def _one_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("must not contain line breaks")
    return value


Path_ = Annotated[Text, Field(min_length=1, max_length=4096)]
Ref = Annotated[Text, Field(min_length=1, max_length=1024), AfterValidator(_not_option)]
Url = Annotated[Text, Field(min_length=1, max_length=8192), AfterValidator(_not_option)]
Secret = Annotated[Text, Field(max_length=8192), AfterValidator(_one_line)]
ContextLines = Annotated[StrictInt, Field(ge=0, le=100_000)]
Timestamp = Annotated[Text, Field(min_length=1, max_length=64), AfterValidator(_not_option)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path_


class PathBody(_Body):
    """``status``, ``reset``."""


class CloneBody(_Body):
    url: Url
    branch: Ref | None = None
    commit_id: Ref | None = None
    depth: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    username: Secret | None = None
    password: Secret | None = None


class BranchesBody(_Body):
    branch_type: Literal["local", "remote", "all"] = "local"
    contains: Ref | None = None
    not_contains: Ref | None = None


class DiffWorkBody(_Body):
    """``diff-unstaged``, ``diff-staged``."""

    context_lines: ContextLines | None = None


class DiffBody(DiffWorkBody):
    target: Ref


class LogBody(_Body):
    max_count: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = None
    start_timestamp: Timestamp | None = None
    end_timestamp: Timestamp | None = None


class ShowBody(_Body):
    revision: Ref = "HEAD"


class CreateBranchBody(_Body):
    name: Ref
    checkout: bool | None = None
    base_branch: Ref | None = None


class CheckoutBranchBody(_Body):
    branch: Ref
    create: bool | None = None


class DeleteBranchBody(_Body):
    name: Ref
    force: bool = False


class AddBody(_Body):
    files: Annotated[list[Path_], Field(min_length=1, max_length=10_000)]


class CommitBody(_Body):
    message: Annotated[Text, Field(min_length=1, max_length=1 << 20)]
    author: Annotated[Text, Field(min_length=1, max_length=256), AfterValidator(_one_line)] | None = None
    email: Annotated[Text, Field(min_length=1, max_length=256), AfterValidator(_one_line)] | None = None
    allow_empty: bool | None = None


class RemoteBody(_Body):
    """``push``, ``pull``."""

    remote: Ref | None = None
    branch: Ref | None = None
    set_upstream: bool | None = None
    rebase: bool | None = None  # pull only
    username: Secret | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class Plan:
    """What one op runs: git commands in order (the script stops at the first failure), and
    the credential to feed its helper (None: no helper, stdin is empty)."""

    commands: list[list[str]]
    credential: str | None = None
    network: bool = False  # talks to a remote: a longer timeout
    env: dict[str, str] = field(default_factory=lambda: dict(GIT_ENV))

    def script(self) -> str:
        """The ``/bin/sh -c`` text: output of both streams, in order, on stdout."""
        lines = [shlex.join(argv) for argv in self.commands]
        prefix = "exec 3<&0 </dev/null 2>&1" if self.credential is not None else "exec </dev/null 2>&1"
        return prefix + "\n" + " &&\n".join(lines)


def git(path: str, *args: str) -> list[str]:
    return ["git", "-C", path, *args]


def credential(username: str | None, password: str | None) -> str | None:
    """The credential helper's answer, or None when the body gives none."""
    if username is None and password is None:
        return None
    lines = [f"username={username if username is not None else DEFAULT_USERNAME}"]
    if password is not None:
        lines.append(f"password={password}")
    return "\n".join(lines) + "\n"


def _with_helper(argv: list[str], secret: str | None) -> list[str]:
    if secret is None:
        return argv
    # "credential.helper=" first: the call ignores the sandbox's own helpers (a store would keep it)
    return [argv[0], "-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}", *argv[1:]]


def _context(lines: int | None) -> list[str]:
    return [] if lines is None else [f"--unified={lines}"]


def clone(body: CloneBody) -> Plan:
    secret = credential(body.username, body.password)
    argv = ["git", "clone"]
    if body.branch is not None:
        argv += ["--branch", body.branch]
    if body.depth is not None:
        argv += [f"--depth={body.depth}"]
    commands = [_with_helper([*argv, "--", body.url, body.path], secret)]
    if body.commit_id is not None:
        commands.append(git(body.path, "checkout", "--detach", body.commit_id))
    return Plan(commands, credential=secret, network=True)


def status(body: PathBody) -> Plan:
    return Plan([git(body.path, "status", "--porcelain=v2", "--branch")])


def reset(body: PathBody) -> Plan:
    return Plan([git(body.path, "reset", "--quiet")])


def branches(body: BranchesBody) -> Plan:
    argv = git(body.path, "branch", "--no-color")
    argv += {"local": [], "remote": ["--remotes"], "all": ["--all"]}[body.branch_type]
    if body.contains is not None:
        argv += ["--contains", body.contains]
    if body.not_contains is not None:
        argv += ["--no-contains", body.not_contains]
    return Plan([argv])


def diff_unstaged(body: DiffWorkBody) -> Plan:
    return Plan([git(body.path, "diff", "--no-color", *_context(body.context_lines))])


def diff_staged(body: DiffWorkBody) -> Plan:
    return Plan([git(body.path, "diff", "--no-color", "--cached", *_context(body.context_lines))])


def diff(body: DiffBody) -> Plan:
    return Plan([git(body.path, "diff", "--no-color", *_context(body.context_lines), body.target, "--")])


def log(body: LogBody) -> Plan:
    argv = git(body.path, "log", "--no-color", f"--max-count={body.max_count or DEFAULT_LOG_COUNT}")
    if body.start_timestamp is not None:
        argv.append(f"--since={body.start_timestamp}")
    if body.end_timestamp is not None:
        argv.append(f"--until={body.end_timestamp}")
    return Plan([argv])


def show(body: ShowBody) -> Plan:
    return Plan([git(body.path, "show", "--no-color", body.revision, "--")])


def create_branch(body: CreateBranchBody) -> Plan:
    base = [] if body.base_branch is None else [body.base_branch]
    if body.checkout:
        return Plan([git(body.path, "switch", "--create", body.name, *base)])
    return Plan([git(body.path, "branch", body.name, *base)])


def checkout_branch(body: CheckoutBranchBody) -> Plan:
    if body.create:
        return Plan([git(body.path, "switch", "--create", body.branch)])
    return Plan([git(body.path, "switch", body.branch)])


def delete_branch(body: DeleteBranchBody) -> Plan:
    return Plan([git(body.path, "branch", "--delete", *(["--force"] if body.force else []), body.name)])


def add(body: AddBody) -> Plan:
    return Plan([git(body.path, "add", "--", *body.files)])


def commit(body: CommitBody) -> Plan:
    identity: list[str] = []
    if body.author is not None:
        identity += ["-c", f"user.name={body.author}"]
    if body.email is not None:
        identity += ["-c", f"user.email={body.email}"]
    argv = ["git", "-C", body.path, *identity, "commit", "--message", body.message]
    if body.allow_empty:
        argv.append("--allow-empty")
    return Plan([argv])


def commit_sha(path: str) -> Plan:
    """After a commit that succeeded: the sha it made."""
    return Plan([git(path, "rev-parse", "--verify", "HEAD")])


def _remote_args(body: RemoteBody) -> list[str]:
    if body.branch is not None:
        return [body.remote or "origin", body.branch]
    return [] if body.remote is None else [body.remote]


def push(body: RemoteBody) -> Plan:
    secret = credential(body.username, body.password)
    argv = git(body.path, "push", *(["--set-upstream"] if body.set_upstream else []), *_remote_args(body))
    return Plan([_with_helper(argv, secret)], credential=secret, network=True)


def pull(body: RemoteBody) -> Plan:
    secret = credential(body.username, body.password)
    mode = "--rebase" if body.rebase else "--no-rebase"  # git 2.39 refuses to guess on divergence
    commands = [_with_helper(git(body.path, "pull", mode, *_remote_args(body)), secret)]
    if body.set_upstream and body.branch is not None:
        upstream = f"{body.remote or 'origin'}/{body.branch}"
        commands.append(git(body.path, "branch", f"--set-upstream-to={upstream}"))
    return Plan(commands, credential=secret, network=True)
