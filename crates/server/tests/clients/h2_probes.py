"""Frame-level HTTP/2 probes against poolserve's h2c server, written with Python's hyperframe
and hpack (from the `h2` package), including frames a well-behaved client library refuses to
send. Each probe checks the server's answer and that the server still serves a fresh
connection afterwards. Exits non-zero on any mismatch; prints one line per probe.

    h2_probes.py HOST:PORT --max-streams N --max-header-list BYTES
"""

import argparse
import socket
import struct
import sys
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 10
PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x7, 0x8, 0xB


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


class Conn:
    """One raw HTTP/2 client connection."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buf = b""
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames):
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        """The next frame, or None when the server closed. Server SETTINGS are acknowledged."""
        header = self._read_exact(9)
        if header is None:
            return None
        frame, length = Frame.parse_frame_header(memoryview(header))
        body = self._read_exact(length)
        if body is None:
            return None
        frame.parse_body(memoryview(body))
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]))
        return frame

    def until(self, pred, seconds=TIMEOUT):
        """Reads until a frame matches `pred`; None if the server closed first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frame = self.read_frame()
            if frame is None or pred(frame):
                return frame
        check(False, "no expected frame in time")

    def header_block(self, path, extra=()):
        return self.encoder.encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", path), *extra]
        )

    def request(self, stream_id, path):
        self.send(HeadersFrame(stream_id, self.header_block(path), flags=["END_HEADERS", "END_STREAM"]))

    def status_of(self, frame):
        return dict(self.decoder.decode(frame.data)).get(":status")

    def close(self):
        self.sock.close()


def still_serves(host, port):
    """A fresh connection gets `GET /` answered promptly."""
    c = Conn(host, port)
    started = time.monotonic()
    c.request(1, "/")
    frame = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1, seconds=5)
    check(frame is not None and c.status_of(frame) == "200", "a fresh connection is served")
    c.close()
    return time.monotonic() - started


def probe_ping(host, port):
    c = Conn(host, port)
    c.send(PingFrame(0, opaque_data=b"poolserv"))
    ack = c.until(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags)
    check(ack is not None and ack.opaque_data == b"poolserv", "PING acknowledged with its data")
    c.close()
    return "PING acked"


def probe_data_on_stream_zero(host, port):
    c = Conn(host, port)
    # DATA must belong to a stream (RFC 9113 §6.1); hyperframe refuses to build this, so raw.
    c.send(struct.pack(">I", 4)[1:] + bytes([0x0, 0x0]) + struct.pack(">I", 0) + b"oops")
    goaway = c.until(lambda f: isinstance(f, GoAwayFrame))
    check(goaway is not None and goaway.error_code == PROTOCOL_ERROR, f"GOAWAY PROTOCOL_ERROR, got {goaway}")
    check(c.read_frame() is None, "connection closed after the GOAWAY")
    return "GOAWAY PROTOCOL_ERROR"


def probe_too_many_streams(host, port, max_streams):
    c = Conn(host, port)
    # Wait for the server's SETTINGS, so the limit is known to be in force.
    c.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    ids = [1 + 2 * i for i in range(max_streams + 1)]
    for sid in ids:
        c.request(sid, "/sleep?ms=300")
    refused, finished = set(), set()
    while len(refused) + len(finished) < len(ids):
        f = c.until(lambda f: isinstance(f, (RstStreamFrame, DataFrame, GoAwayFrame)))
        check(f is not None and not isinstance(f, GoAwayFrame), f"connection survives: {f}")
        if isinstance(f, RstStreamFrame):
            check(f.error_code == REFUSED_STREAM, f"RST_STREAM REFUSED_STREAM, got {f.error_code}")
            refused.add(f.stream_id)
        elif "END_STREAM" in f.flags:
            finished.add(f.stream_id)
    check(refused == {ids[-1]}, f"only the stream over {max_streams} is refused: {sorted(refused)}")
    check(finished == set(ids[:-1]), "the streams within the limit finish")
    c.close()
    return f"stream {max_streams + 1} REFUSED_STREAM, {max_streams} served"


def probe_oversized_header_list(host, port, limit):
    c = Conn(host, port)
    c.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    block = c.header_block("/", extra=[("x-big", "v" * (2 * limit))])
    # Split into HEADERS + CONTINUATION frames within the default 16 KiB frame size.
    parts = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames = [HeadersFrame(1, parts[0], flags=["END_STREAM"] + (["END_HEADERS"] if len(parts) == 1 else []))]
    for i, part in enumerate(parts[1:], start=1):
        frames.append(ContinuationFrame(1, part, flags=["END_HEADERS"] if i == len(parts) - 1 else []))
    c.send(*frames)
    f = c.until(lambda f: isinstance(f, (HeadersFrame, RstStreamFrame, GoAwayFrame)))
    check(isinstance(f, HeadersFrame) and c.status_of(f) == "431", f"431 for a header list of 2x the limit, got {f}")
    c.close()
    return "431"


def probe_settings_flood(host, port):
    c = Conn(host, port)
    c.sock.settimeout(5)
    sent = 0
    flood = SettingsFrame(0).serialize() * 1000
    try:
        for _ in range(50):  # 50,000 SETTINGS frames, never reading the ACKs
            c.sock.sendall(flood)
            sent += 1000
    except (socket.timeout, ConnectionError):
        pass  # the server stopped reading (backpressure) or closed: both bound the flood
    took = still_serves(host, port)
    check(took < 2, f"served in {took:.2f}s during a SETTINGS flood")
    c.sock.settimeout(2)
    outcome = f"{sent} SETTINGS sent"
    try:
        f = c.until(lambda f: isinstance(f, GoAwayFrame), seconds=3)
        outcome += ", connection closed" if f is None else f", GOAWAY code {f.error_code}"
    except (socket.timeout, ConnectionError):
        outcome += ", flooder not closed (its ACKs backpressured)"
    c.close()
    return outcome + f"; others served in {took * 1000:.0f} ms"


def probe_rapid_reset(host, port):
    c = Conn(host, port)
    c.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    sid, opened = 1, 0
    goaway = None
    try:
        for _ in range(100):  # up to 10,000 streams, each opened and at once cancelled
            batch = []
            for _ in range(100):
                batch.append(HeadersFrame(sid, c.header_block("/sleep?ms=1000"), flags=["END_HEADERS", "END_STREAM"]))
                batch.append(RstStreamFrame(sid, error_code=CANCEL))
                sid += 2
            c.send(*batch)
            opened += 100
    except (ConnectionError, socket.timeout):
        pass
    try:
        goaway = c.until(lambda f: isinstance(f, GoAwayFrame), seconds=5)
    except (ConnectionError, socket.timeout):
        goaway = None
    took = still_serves(host, port)
    check(took < 2, f"served in {took:.2f}s after a rapid-reset attack")
    check(goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM,
          f"GOAWAY ENHANCE_YOUR_CALM after {opened} opened-and-reset streams, got {goaway}")
    c.close()
    return f"GOAWAY ENHANCE_YOUR_CALM after <= {opened} reset streams; others served in {took * 1000:.0f} ms"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--max-streams", type=int, required=True)
    parser.add_argument("--max-header-list", type=int, required=True)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    print("ping:", probe_ping(host, port), flush=True)
    print("data on stream 0:", probe_data_on_stream_zero(host, port), flush=True)
    print("too many streams:", probe_too_many_streams(host, port, args.max_streams), flush=True)
    print("oversized header list:", probe_oversized_header_list(host, port, args.max_header_list), flush=True)
    print("settings flood:", probe_settings_flood(host, port), flush=True)
    print("rapid reset:", probe_rapid_reset(host, port), flush=True)
    print("ok")


if __name__ == "__main__":
    main()
