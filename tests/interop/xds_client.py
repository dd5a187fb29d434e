"""A proxyless gRPC xDS client: calls TARGET N times, prints one backend name per line.

Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json xds_client.py xds:///echo.default:PORT N
Reads further counts on stdin (one number per line) and answers each with
that many calls, so one channel (one xDS subscription) serves a whole test.
"""
import sys

import grpc


def main():
    target, n = sys.argv[1], int(sys.argv[2])
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/test.Echo/Hello", request_serializer=None, response_deserializer=None)

    def burst(k):
        for _ in range(k):
            try:
                print(call(b"", timeout=5, wait_for_ready=True).decode(), flush=True)
            except grpc.RpcError as e:
                print(f"ERROR {e.code().name} {e.details()}", flush=True)
        print("--", flush=True)

    burst(n)
    for line in sys.stdin:
        line = line.strip()
        if line:
            burst(int(line))


if __name__ == "__main__":
    main()
