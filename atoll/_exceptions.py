"""One error tree for the SDK and the server.

    AtollError
    ├── InvalidArgument              bad input caught before any request (status_code None)
    ├── TransportError               the network failed (connect, read, protocol)
    │   ├── AtollTimeoutError        an HTTP call or an operation ran out of time
    │   └── MalformedResponseError   a success answer whose body breaks the wire protocol
    └── APIError                     the server answered with an error status
        ├── BadRequestError          400, carries ``errors`` [{field, error}]
        ├── AuthenticationError      401
        ├── PermissionDeniedError    403
        ├── NotFoundError            404
        ├── ConflictError            409  (wrong state, duplicate name, org limit)
        ├── RateLimitError           429  (``retry_after`` seconds)
        └── ServerError              5xx
            └── UnavailableError     503  (not ready yet, e.g. a template being built; ``retry_after``)
                └── CapacityError    503  (the host has no room; ``retry_after``)

The server raises these same classes; ``status_for`` maps a class to its HTTP status by
walking the MRO, and the SDK maps a status back with ``error_for_status``.

Below the server (runtime, agent, templates, network), failures carry no HTTP status: they are
typed by what went wrong, and ``atoll.server.errors.http_error`` is the one place that picks a
status for each::

    AtollError
    └── OperationFailure             a failure below the server (``errno`` when one says why)
        ├── TemplateFailure          a template's image or record
        │   ├── TemplateNotFound     no such template in the organisation
        │   ├── TemplateConflict     a name in use, the organisation's limit, still in use
        │   └── ImageRejected        the image cannot be used (``errors`` names ``uri``)
        ├── HostCapacityExhausted    the host has no network address or id range left
        ├── ClusterCapacityExhausted no node of the cluster has room (``retry_after_s``)
        ├── NodeUnreachable          the node a request is forwarded to did not answer
        └── SandboxFailure           something in a sandbox failed
        ├── ExecSetupFailed          a command could not start; nothing ran
        │   ├── BadWorkingDirectory  its cwd is missing or not a directory
        │   ├── ProcessLimitReached  no fork: the sandbox's process limit is used up (EAGAIN)
        │   ├── ProcessTableFull     the agent tracks as many processes as it can (EBUSY)
        │   ├── SandboxNotRunning    the sandbox's runtime is gone (e.g. the host's OOM killer)
        │   └── AgentUnavailable     the sandbox's agent does not answer
        ├── TerminalStartFailed      the runtime could not start a terminal's process
        ├── ProcessNotFound          no such process (ESRCH)
        ├── ProcessStateConflict     it has ended, has no stdin, or does not read it
        ├── AgentProtocolError       the agent broke its protocol (untrusted input)
        └── FileFailure              a file operation on a sandbox's filesystem failed
            ├── FileRequestInvalid   it cannot be done as asked (a directory, a bad pattern,
            │                        too large); ``errors`` [{field, error}] when a field is at fault
            ├── FileNotFound         no such file (ENOENT, ENOTDIR)
            ├── FileConflict         it exists, is not empty, is busy (EEXIST, ENOTEMPTY, EBUSY)
            │   └── FilesystemNotMounted  the sandbox's root is not mounted (it is stopped)
            ├── FileAccessDenied     not allowed (EACCES, EPERM, EROFS, outside the root)
            └── FileStorageFull      no space or quota left (ENOSPC, EDQUOT)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class AtollError(Exception):
    """Base of every error Atoll raises."""

    status_code: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AtollError, ValueError):
    """An argument failed validation on the client; nothing was sent."""

    def __init__(self, field: str, error: str) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error


class TransportError(AtollError):
    """The HTTP exchange itself failed."""

    retryable = True


class AtollTimeoutError(TransportError, TimeoutError):
    """An HTTP call or a server-side operation did not finish in time."""


class MalformedResponseError(TransportError):
    """The server answered with the expected status, but the body is not what the wire protocol says
    (not JSON, or a required field such as ``id`` missing). Asking again will not help."""

    retryable = False


class APIError(AtollError):
    """The server answered with an error status."""

    status_code: int | None = 500

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        self.errors = [dict(e) for e in errors or ()]
        self.headers = dict(headers or {})
        self.body = body
        self.retry_after = retry_after

    @property
    def error_message(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return self.status_code is not None and (self.status_code == 429 or self.status_code >= 500)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body

    def __str__(self) -> str:
        return f"{self.status_code} {self.message}"


class BadRequestError(APIError):
    status_code = 400


class AuthenticationError(APIError):
    status_code = 401


class PermissionDeniedError(APIError):
    status_code = 403


class NotFoundError(APIError):
    status_code = 404


class ConflictError(APIError):
    status_code = 409


class RateLimitError(APIError):
    status_code = 429


class ServerError(APIError):
    status_code = 500


class UnavailableError(ServerError):
    """Temporarily unable to serve the request; ``retry_after`` says when to ask again."""

    status_code = 503


class CapacityError(UnavailableError):
    status_code = 503


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
    503: CapacityError,
}


def error_for_status(status_code: int) -> type[APIError]:
    """The most specific error class for an HTTP status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError


def status_for(error: APIError) -> int:
    """The HTTP status the server answers with for an error (instance value, else the class's)."""
    return error.status_code or 500


class OperationFailure(AtollError):
    """A failure below the server, typed by what went wrong (never by its text); it carries no
    HTTP status (``atoll.server.errors`` picks one). ``errno`` is the system's reason when one is
    known (e.g. the agent sends it, see agent.c)."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class TemplateFailure(OperationFailure):
    """A template's image could not be imported or its record used."""


class TemplateNotFound(TemplateFailure):
    """No such (ready) template in the organisation."""


class TemplateConflict(TemplateFailure):
    """A template name in use, the organisation's template limit, or a template still in use."""


class ImageRejected(TemplateFailure):
    """The image cannot be used (its source, manifest or root filesystem); ``errors`` names the
    request's fields at fault."""

    def __init__(
        self, message: str, *, errno: int | None = None, errors: Sequence[Mapping[str, str]] | None = None
    ) -> None:
        super().__init__(message, errno=errno)
        self.errors = [dict(e) for e in errors or ()]


class HostCapacityExhausted(OperationFailure):
    """The host has no sandbox network address, or user-namespace id range, left."""


class ClusterCapacityExhausted(OperationFailure):
    """No up node of the cluster has room for the sandbox (atoll.cluster.placement);
    ``retry_after_s`` says when asking again may find some (sandboxes end, nodes join)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NodeUnreachable(OperationFailure):
    """The cluster node that runs a sandbox, or was chosen for a new one, did not answer the API
    replica that forwards to it (atoll.server.forward)."""


class SandboxFailure(OperationFailure):
    """A failure inside a sandbox or its runtime."""


class ExecSetupFailed(SandboxFailure):
    """A command could not be started at all; nothing ran."""


class BadWorkingDirectory(ExecSetupFailed):
    """The command's working directory is missing, not a directory, or not reachable."""


class ProcessLimitReached(ExecSetupFailed):
    """No process could be made (EAGAIN, ENOMEM): the sandbox's process limit is used up, e.g.
    by a fork bomb still being reaped. Transient, and the sandbox's doing."""


class ProcessTableFull(ExecSetupFailed):
    """The agent already tracks as many background processes as it can (EBUSY)."""


class SandboxNotRunning(ExecSetupFailed):
    """The sandbox's runtime is gone (e.g. the host's OOM killer ended a gVisor sentry)."""


class AgentUnavailable(ExecSetupFailed):
    """The sandbox's agent does not answer (not listening, or stopped from inside)."""


class TerminalStartFailed(SandboxFailure):
    """The runtime could not start a terminal's process."""


class ProcessNotFound(SandboxFailure):
    """No process of that pid in the sandbox (ESRCH)."""


class ProcessStateConflict(SandboxFailure):
    """The process cannot do that now: it has ended, was started without stdin, or does not
    read its stdin."""


class AgentProtocolError(SandboxFailure):
    """The agent's reply breaks its protocol (it is untrusted input)."""


class FileFailure(SandboxFailure):
    """A file operation on a sandbox's filesystem (or a template's) failed."""


class FileRequestInvalid(FileFailure):
    """The operation cannot be done as asked; ``errors`` names the fields at fault, if any."""

    def __init__(
        self, message: str, *, errno: int | None = None, errors: Sequence[Mapping[str, str]] | None = None
    ) -> None:
        super().__init__(message, errno=errno)
        self.errors = [dict(e) for e in errors or ()]


class FileNotFound(FileFailure):
    """No such file or directory."""


class FileConflict(FileFailure):
    """The path exists already, is a directory that is not empty, or is busy."""


class FilesystemNotMounted(FileConflict):
    """The sandbox's root filesystem is not mounted (the sandbox is stopped)."""


class FileAccessDenied(FileFailure):
    """Not allowed: permissions, a read-only path, or a path leading outside the sandbox's root."""


class FileStorageFull(FileFailure):
    """No space or quota left where the file goes."""
