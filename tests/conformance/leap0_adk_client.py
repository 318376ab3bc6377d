"""Runs under Python 3.12 with the unchanged leap0-adk 0.1.0 (Google ADK tools over the public
leap0 SDK); never imported by pytest itself.

Usage: leap0_adk_client.py BASE_URL API_KEY SANDBOX_DOMAIN
The plugin creates its own sandbox of leap0's default code-interpreter template; each tool is
called the way ADK's runner calls it (``run_async`` with the model's arguments), so no model is
needed. Prints one JSON object with what the tools returned; the plugin deletes its sandbox."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from google.adk.tools import BaseTool
from leap0_adk import Leap0Plugin


async def call(tools: dict[str, BaseTool], name: str, **args: Any) -> Any:
    # the tools never read the context; ADK's runner passes its own ToolContext here
    return await tools[name].run_async(args=args, tool_context=None)  # type: ignore[arg-type]


async def exercise(plugin: Leap0Plugin) -> dict[str, Any]:
    tools = {tool.name: tool for tool in plugin.get_tools()}
    seen: dict[str, Any] = {
        "tools": sorted(tools),
        "declarations": sorted(d.name or "" for d in (t._get_declaration() for t in tools.values()) if d),
    }
    first = await call(tools, "execute_code_in_leap0", code="x = 6 * 7\nimport os\nprint(os.getcwd())\nx")
    seen["first"] = [first["ok"], first["main_text"], first["stdout"], bool(first["context_id"])]
    again = await call(tools, "execute_code_in_leap0", code="x + 1", context_id=first["context_id"])
    seen["again"] = [again["ok"], again["main_text"]]
    failed = await call(tools, "execute_code_in_leap0", code="1/0")
    seen["failed"] = [failed["ok"], failed["error"]["name"]]
    seen["write"] = await call(
        tools, "leap0_fs_write", path="/home/user/a/notes.txt", content="one\ntwo\nthree\n"
    )
    read = await call(tools, "leap0_fs_read", path="/home/user/a/notes.txt", head=2)
    seen["read_head"] = [read["ok"], read["content"]]
    listed = await call(tools, "leap0_fs_list", path="/home/user/a")
    seen["list"] = [listed["ok"], [item["name"] for item in listed["listing"]["items"]]]
    seen["delete"] = await call(tools, "leap0_fs_delete", path="/home/user/a", recursive=True)
    missing = await call(tools, "leap0_fs_read", path="/home/user/a/notes.txt")
    seen["read_missing"] = [missing["ok"], "error" in missing]
    seen["both_ends"] = await call(tools, "leap0_fs_read", path="/x", head=1, tail=1)
    return seen


def main() -> None:
    base_url, api_key, domain = sys.argv[1:4]
    plugin = Leap0Plugin(api_key=api_key, base_url=base_url, sandbox_domain=domain)
    sandbox_id = plugin.sandbox.id
    try:
        seen = asyncio.run(exercise(plugin))
    finally:
        asyncio.run(plugin.close())
    seen["sandbox_id"] = sandbox_id
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
