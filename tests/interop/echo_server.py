"""A gRPC server answering /test.Echo/Hello with its own name, no codegen.

Usage: echo_server.py NAME HOST:PORT   (prints "ready" once serving)
"""
import sys
import time
from concurrent import futures

import grpc


def main():
    name, addr = sys.argv[1], sys.argv[2]

    def hello(request, context):
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {"Hello": grpc.unary_unary_rpc_method_handler(hello, request_deserializer=None, response_serializer=None)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
