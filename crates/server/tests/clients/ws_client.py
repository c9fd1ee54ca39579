"""An outside WebSocket client for poolserve's tests (Python `websockets`).

Usage: ws_client.py URL [--cafile PEM]. Exits 0 when every check passes, 1 with a message
otherwise: echo of text, binary and a fragmented 1 MiB message, then a normal close.

ws_client.py URL --until-closed: sends a message every 50 ms, checking each echo, until the
server closes the connection (failing after 10 s); prints "closed CODE after N echoes" (the
code the server sent).
"""
import asyncio
import ssl
import sys

import websockets


async def main(url: str, cafile: str | None) -> None:
    context = None
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
    async with websockets.connect(url, ssl=context, max_size=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello", "text echo"
        await ws.send(b"\x00\x01\xfe\xff")
        assert await ws.recv() == b"\x00\x01\xfe\xff", "binary echo"
        big = bytes(range(256)) * 4096  # 1 MiB
        fragments = [big[i : i + 65536] for i in range(0, len(big), 65536)]
        await ws.send(fragments)  # one message in 16 fragments
        echoed = await ws.recv()
        assert echoed == big, f"fragmented echo: got {len(echoed)} bytes"
        await ws.close(code=1000, reason="done")
    assert ws.close_code == 1000, f"close code {ws.close_code}"
    print("ok")


async def until_closed(url: str) -> None:
    echoes = 0
    async with websockets.connect(url, max_size=None) as ws:
        try:
            while True:
                await ws.send(f"m{echoes}")
                reply = await ws.recv()
                assert reply == f"m{echoes}", f"echo {echoes}: {reply!r}"
                echoes += 1
                await asyncio.sleep(0.05)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, f"no close frame from the server: {closed!r}"
            print(f"closed {closed.rcvd.code} after {echoes} echoes", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--until-closed" in args:
        args.remove("--until-closed")
        try:
            asyncio.run(asyncio.wait_for(until_closed(args[0]), timeout=10))
        except Exception as e:  # noqa: BLE001 - report any failure as a test failure
            print(f"FAILED: {e!r}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    cafile = None
    if "--cafile" in args:
        i = args.index("--cafile")
        cafile = args[i + 1]
        del args[i : i + 2]
    try:
        asyncio.run(main(args[0], cafile))
    except Exception as e:  # noqa: BLE001 - report any failure as a test failure
        print(f"FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
