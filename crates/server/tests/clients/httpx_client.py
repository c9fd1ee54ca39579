"""HTTP/2 interoperability from Python httpx (with its `h2` backend) against poolserve's
`http2` servers: h2c with prior knowledge, and h2 over TLS chosen by ALPN. Exits non-zero on
any mismatch.

    httpx_client.py H2C_HOST:PORT TLS_PORT CA.pem
"""

import sys

import httpx


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def exercise(client, base):
    r = client.get(f"{base}/")
    check(r.http_version == "HTTP/2", f"{base}: HTTP/2, got {r.http_version}")
    check(r.status_code == 200 and r.text == "hello", f"{base} GET /: {r.status_code} {r.text!r}")
    body = b"z" * 100_000
    r = client.post(f"{base}/echo", content=body)
    check(r.status_code == 200 and r.content == body, f"{base} POST /echo of 100 kB")
    r = client.get(f"{base}/stream", params={"chunks": 5, "interval_ms": 10})
    check(r.status_code == 200 and len(r.content) > 0, f"{base} GET /stream")


def main():
    h2c, tls_port, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
    # http1=False: HTTP/2 with prior knowledge on http:// URLs.
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        exercise(client, f"http://{h2c}")
    with httpx.Client(http2=True, verify=cafile, timeout=10) as client:
        exercise(client, f"https://localhost:{tls_port}")
    print("ok")


if __name__ == "__main__":
    main()
