"""gRPC interoperability from Python grpcio against poolserve's `grpc` server.

Learns the demo service's messages from the server's reflection (grpcio-reflection, v1alpha),
then calls Echo.Unary and Echo.Stream, sends an oversized message (RESOURCE_EXHAUSTED expected)
and checks grpc.health.v1 (grpcio-health-checking). Exits non-zero on any mismatch.

    grpc_client.py HOST:PORT [--cafile CA.pem]      the checks above
    grpc_client.py HOST:PORT --watch-until-not-serving
        prints "watching SERVING" once Health.Watch says SERVING, then exits 0 when it says
        NOT_SERVING (the test fills the pool meanwhile).
    grpc_client.py HOST:PORT --streams-through-drain N
        opens N Echo.Stream calls of 8 replies 100 ms apart, prints "streaming" once each has
        its first reply, then exits 0 if every call gets all 8 and ends OK (the test shuts the
        server down meanwhile).
    grpc_client.py HOST:PORT --deadline-calls N
        makes N Echo.Stream calls of 100 replies 50 ms apart, each with a 0.1 s deadline, and
        exits 0 if every one ends with DEADLINE_EXCEEDED.
    grpc_client.py HOST:PORT --calls-for SECONDS
        on one channel, makes Echo.Unary calls back to back for SECONDS while one Echo.Stream
        call of replies 200 ms apart spans the whole time; exits 0 if every call succeeds
        (the server closes the channel's connections meanwhile: grpcio reconnects), printing
        "calls ok N".
    grpc_client.py HOST:PORT --large-calls N --size BYTES
        starts N Echo.Unary calls of a BYTES-long message at once on one channel, and exits 0
        if every one is echoed back whole.
    grpc_client.py HOST:PORT --gzip-expanding BYTES
        sends one Echo.Unary call whose BYTES-long message is gzip-compressed to a few KiB, and
        prints the status code it ends with (the test judges it).
"""

import argparse
import sys
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 10


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def channel_for(args):
    if args.cafile:
        with open(args.cafile, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(
            args.target, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    return grpc.insecure_channel(args.target)


def watch_until_not_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for reply in health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20):
        if reply.status == serving:
            print("watching SERVING", flush=True)
        elif reply.status == not_serving:
            print("NOT_SERVING", flush=True)
            return
    check(False, "the Watch stream ended before NOT_SERVING")


def echo_calls(channel):
    """Echo.Unary and Echo.Stream, with their messages learned from reflection."""
    reflection = ProtoReflectionDescriptorDatabase(channel)
    services = reflection.get_services()
    for name in ("poolserve.demo.Echo", "grpc.health.v1.Health"):
        check(name in services, f"{name} listed by reflection: {services}")
    pool = descriptor_pool.DescriptorPool(reflection)
    message = lambda name: message_factory.GetMessageClass(  # noqa: E731
        pool.FindMessageTypeByName(f"poolserve.demo.{name}")
    )
    EchoRequest, EchoReply, StreamRequest = (
        message("EchoRequest"),
        message("EchoReply"),
        message("StreamRequest"),
    )
    unary = channel.unary_unary(
        "/poolserve.demo.Echo/Unary",
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )
    stream = channel.unary_stream(
        "/poolserve.demo.Echo/Stream",
        request_serializer=StreamRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )
    return EchoRequest, StreamRequest, unary, stream


def streams_through_drain(channel, n):
    _, StreamRequest, _, stream = echo_calls(channel)
    calls = [
        stream(StreamRequest(message=f"d{i}", count=8, interval_ms=100), timeout=TIMEOUT)
        for i in range(n)
    ]
    firsts = [next(call).message for call in calls]
    check(firsts == [f"d{i}" for i in range(n)], f"first replies: {firsts}")
    print("streaming", flush=True)
    for i, call in enumerate(calls):
        rest = [r.message for r in call]
        check(rest == [f"d{i}"] * 7, f"stream {i} after the drain began: {rest}")
        check(call.code() == grpc.StatusCode.OK, f"stream {i} ended with {call.code()}")
    print("drained ok", flush=True)


def deadline_calls(channel, n):
    _, StreamRequest, _, stream = echo_calls(channel)
    for i in range(n):
        try:
            list(stream(StreamRequest(message=f"t{i}", count=100, interval_ms=50), timeout=0.1))
            check(False, f"call {i} outlived its deadline")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"call {i}: {e.code()}")
    print("deadlines ok", flush=True)


def calls_for(channel, seconds):
    EchoRequest, StreamRequest, unary, stream = echo_calls(channel)
    count = int(seconds * 5) + 1
    spanning = stream(
        StreamRequest(message="span", count=count, interval_ms=200), timeout=seconds + TIMEOUT
    )
    calls = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reply = unary(EchoRequest(message=f"c{calls}"), timeout=TIMEOUT)
        check(reply.message == f"c{calls}", f"call {calls}: {reply}")
        calls += 1
        time.sleep(0.01)
    replies = [r.message for r in spanning]
    check(replies == ["span"] * count, f"the spanning stream got {len(replies)} of {count}")
    check(spanning.code() == grpc.StatusCode.OK, f"the spanning stream ended {spanning.code()}")
    print(f"calls ok {calls}", flush=True)


def large_calls(channel, n, size):
    EchoRequest, _, unary, _ = echo_calls(channel)
    messages = [f"{i:>4}" * (size // 4) for i in range(n)]
    calls = [unary.future(EchoRequest(message=m), timeout=TIMEOUT) for m in messages]
    for i, (call, sent) in enumerate(zip(calls, messages)):
        try:
            check(call.result().message == sent, f"call {i} echoed something else")
        except grpc.RpcError as e:
            check(False, f"call {i}: {e.code()} {e.details()}")
    print("large calls ok", flush=True)


def gzip_expanding(channel, size):
    EchoRequest, _, unary, _ = echo_calls(channel)
    try:
        unary(EchoRequest(message="z" * size), timeout=TIMEOUT, compression=grpc.Compression.Gzip)
        print("OK", flush=True)
    except grpc.RpcError as e:
        print(e.code().name, e.details(), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--cafile")
    parser.add_argument("--watch-until-not-serving", action="store_true")
    parser.add_argument("--streams-through-drain", type=int, metavar="N")
    parser.add_argument("--deadline-calls", type=int, metavar="N")
    parser.add_argument("--calls-for", type=float, metavar="SECONDS")
    parser.add_argument("--large-calls", type=int, metavar="N")
    parser.add_argument("--size", type=int, default=1 << 20, metavar="BYTES")
    parser.add_argument("--gzip-expanding", type=int, metavar="BYTES")
    args = parser.parse_args()
    channel = channel_for(args)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    if args.watch_until_not_serving:
        watch_until_not_serving(channel)
        return
    if args.streams_through_drain:
        streams_through_drain(channel, args.streams_through_drain)
        return
    if args.deadline_calls:
        deadline_calls(channel, args.deadline_calls)
        return
    if args.calls_for:
        calls_for(channel, args.calls_for)
        return
    if args.large_calls:
        large_calls(channel, args.large_calls, args.size)
        return
    if args.gzip_expanding:
        gzip_expanding(channel, args.gzip_expanding)
        return

    EchoRequest, StreamRequest, unary, stream = echo_calls(channel)

    reply = unary(EchoRequest(message="from grpcio"), timeout=TIMEOUT)
    check(reply.message == "from grpcio", f"unary echo: {reply}")
    replies = [r.message for r in stream(StreamRequest(message="s", count=4, interval_ms=10), timeout=TIMEOUT)]
    check(replies == ["s"] * 4, f"stream: {replies}")

    try:
        unary(EchoRequest(message="x" * (5 << 20)), timeout=TIMEOUT)
        check(False, "a 5 MiB message was accepted over the 4 MiB limit")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"oversize: {e.code()} {e.details()}")

    try:
        list(stream(StreamRequest(message="slow", count=100, interval_ms=50), timeout=0.3))
        check(False, "a stream outlived its deadline")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline: {e.code()}")

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "poolserve.demo.Echo"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
        check(status == health_pb2.HealthCheckResponse.SERVING, f"health {service!r}: {status}")
    print("ok")


if __name__ == "__main__":
    main()
