"""Control-plane services of the leap0 wire this server does not offer yet: 501
``{"message":"<service> is not available on this server"}`` instead of a bare 404, so a client
can tell "no such sandbox" from "no such feature".

Included last, so a service implemented later wins over its entry here (and the entry should
then go). The answer does not depend on the sandbox: even an unknown sandbox id gets 501,
because the feature is what is missing; no lookup is made (nor auth checked: nothing is
revealed or done). Any other unknown path gets the generic JSON 404 (``atoll.server.errors``)."""

from __future__ import annotations

from fastapi import APIRouter

from atoll._exceptions import APIError

# path segment after /v1/sandbox/{id}/ -> the service's name in the message
UNAVAILABLE: dict[str, str] = {
    "mounts": "mounts",
}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}", tags=["unavailable"], include_in_schema=False)


def _unavailable(service: str) -> None:
    raise APIError(f"{service} is not available on this server", status_code=501)


def _route(segment: str, service: str) -> None:
    async def bare(sandbox_id: str) -> None:
        _unavailable(service)

    async def nested(sandbox_id: str, rest: str) -> None:
        _unavailable(service)

    router.add_api_route(f"/{segment}", bare, methods=METHODS)
    router.add_api_route(f"/{segment}/{{rest:path}}", nested, methods=METHODS)


for _segment, _service in UNAVAILABLE.items():
    _route(_segment, _service)
