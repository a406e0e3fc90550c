"""gRPC plumbing shared by every process: server factory, interceptor chain, client channels."""

from service_runtime.grpc.channels import channel_to, create_channel
from service_runtime.grpc.server import GrpcServer, ServiceBinding, serve_until_signalled

__all__ = ["GrpcServer", "ServiceBinding", "channel_to", "create_channel", "serve_until_signalled"]
