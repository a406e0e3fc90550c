"""Real server processes (Valkey, SeaweedFS, Envoy) started by `make run` and by the test fixtures."""

from .base import (
    GRPC_PORT_OFFSET,
    ManagedProcess,
    ProcessStartError,
    free_port,
    free_port_with_grpc,
)
from .binaries import (
    BinaryNotFoundError,
    envoy_binary,
    grpcurl_binary,
    valkey_server_binary,
    weed_binary,
)
from .envoy import EnvoyConfigError, EnvoyProcess, validate_envoy_config
from .seaweedfs import SeaweedFSServer
from .valkey import ValkeyServer

__all__ = [
    "GRPC_PORT_OFFSET",
    "BinaryNotFoundError",
    "EnvoyConfigError",
    "EnvoyProcess",
    "ManagedProcess",
    "ProcessStartError",
    "SeaweedFSServer",
    "ValkeyServer",
    "envoy_binary",
    "free_port",
    "free_port_with_grpc",
    "grpcurl_binary",
    "validate_envoy_config",
    "valkey_server_binary",
    "weed_binary",
]
