"""Our own SDK (sync and async) against a real `atoll serve` and real sandboxes."""

from __future__ import annotations

import pytest

import atoll
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


def client_for(server: ServerProcess) -> atoll.Client:
    return atoll.Client(api_key=server.api_key, base_url=server.base_url, sandbox_domain="sbx.localhost:7701")


def test_create_execute_get_list_delete(server: ServerProcess) -> None:
    with client_for(server) as client:
        sandbox = client.sandboxes.create()
        assert isinstance(sandbox, atoll.Sandbox)
        assert sandbox.state == atoll.SandboxState.RUNNING
        assert (sandbox.vcpu, sandbox.memory, sandbox.timeout) == (1, 1024, 300)
        result = sandbox.process.execute(command="echo hi")
        assert isinstance(result, atoll.ProcessResult)
        assert result.stdout == "hi\n" and result.exit_code == 0
        assert client.sandboxes.get(sandbox.id).state == "running"
        assert sandbox.id in [item.id for item in client.sandboxes.list().items]
        assert sandbox.invoke_url("/x", port=3000) == f"https://{sandbox.id}-3000.sbx.localhost:7701/x"
        client.sandboxes.delete(sandbox)
        with pytest.raises(atoll.NotFoundError) as missing:
            client.sandboxes.get(sandbox.id)
        assert missing.value.status_code == 404


def test_invalid_arguments_never_reach_the_server(server: ServerProcess) -> None:
    with client_for(server) as client:
        for kwargs, field in (
            ({"vcpu": 9}, "vcpu"),
            ({"memory_mib": 513}, "memory_mib"),
            ({"timeout_min": 0}, "timeout_min"),
        ):
            with pytest.raises(atoll.InvalidArgument) as bad:
                client.sandboxes.create(**kwargs)  # type: ignore[arg-type]
            assert bad.value.field == field
            assert bad.value.status_code is None
        with pytest.raises(atoll.BadRequestError) as unknown:
            client.sandboxes.create(template_name="no/such:template")
        assert unknown.value.errors[0]["field"] == "template_name"


def test_handle_pause_resume_and_context_manager(server: ServerProcess) -> None:
    with client_for(server) as client:
        with client.sandboxes.create(env_vars={"GREETING": "hello"}) as sandbox:
            sandbox.pause()
            assert sandbox.state == "paused"
            assert sandbox.process.execute(command="echo $GREETING").stdout == "hello\n"
            assert sandbox.refresh().state == "running"
            sandbox_id = sandbox.id
        with pytest.raises(atoll.NotFoundError):
            client.sandboxes.get(sandbox_id)


async def test_async_client(server: ServerProcess) -> None:
    async with atoll.AsyncClient(api_key=server.api_key, base_url=server.base_url) as client:
        sandbox = await client.sandboxes.create(memory_mib=512)
        try:
            result = await sandbox.process.execute(command="echo $((6*7))")
            assert result.stdout == "42\n"
            status = await client.sandboxes.get(sandbox.id)
            assert status.state == "running"
        finally:
            await sandbox.delete()
