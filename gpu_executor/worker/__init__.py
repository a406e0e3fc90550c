"""The supervised worker: graphs run in a child process that holds the models; the gRPC server supervises it."""
