"""`python -m service_runtime.healthcheck HOST:PORT [SERVICE]`: exit 0 when the gRPC health check says SERVING.

For container HEALTHCHECKs and scripts; images cannot download grpc_health_probe at run time.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m service_runtime.healthcheck HOST:PORT [SERVICE]")
    sys.exit(0 if check(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "") else 1)


if __name__ == "__main__":
    main()
