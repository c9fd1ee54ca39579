"""An outside WebSocket client for poolserve's tests (Python `websockets`).

Usage: ws_client.py URL [--cafile PEM]. Exits 0 when every check passes, 1 with a message
otherwise: echo of text, binary and a fragmented 1 MiB message, then a normal close.
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


if __name__ == "__main__":
    args = sys.argv[1:]
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
