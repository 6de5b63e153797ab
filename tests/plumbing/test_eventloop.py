"""Every role's event loop: uvloop where installed."""

from __future__ import annotations

import asyncio

import uvloop

from berth.plumbing import eventloop


def test_roles_run_on_uvloop() -> None:
    async def which() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    assert eventloop.run(which()) is uvloop.Loop
    loop = eventloop.new_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()
