"""ModelService: model files uploaded (gRPC stream, presigned single or multipart PUT), imported (bucket key, http(s)
URL behind the SSRF guard), validated before they become visible (safetensors only, never unpickled), described
(kind → ComfyUI folder, architecture, LoRA base and rank, parameters, dtypes, `__metadata__`), stored where the
executors resolve them (`<folder>/<name>` in the models bucket, sha256 sidecar), listed with their availability per
executor, and deleted unless queued or running executions use them.

Layers: transport.py (servicer, proto ⇄ domain) → service.py (the domain service) → repository.py (SQL),
storage.py (the models bucket), fleet.py (ExecutionService.ListExecutors client); safetensors_header.py and
architecture.py are pure functions of the bytes and the header; component.py wires it all from the process context.
"""
