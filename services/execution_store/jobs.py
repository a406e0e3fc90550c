"""The queue job of an execution: what placement needs to know, derived from the record's graph."""

from __future__ import annotations

from datetime import timedelta

from comfymesh.queue.v1 import queue_service_pb2 as qpb
from service_runtime.transport.graph_codec import Graph
from services.execution_store.domain import ExecutionRecord

MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")


def node_classes(graph: Graph) -> list[str]:
    return sorted({str(node.get("class_type", "")) for node in graph.values() if isinstance(node, dict)} - {""})


def model_names(graph: Graph) -> list[str]:
    """Model files the graph names (e.g. `ckpt_name`, `lora_name`), for cache-aware placement."""
    names: set[str] = set()
    for node in graph.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for key, value in inputs.items() if isinstance(inputs, dict) else ():
            if isinstance(value, str) and key.endswith("_name") and value.lower().endswith(MODEL_FILE_SUFFIXES):
                names.add(value)
    return sorted(names)


def job_of(record: ExecutionRecord) -> qpb.Job:
    job = qpb.Job(job_id=record.id, priority=record.priority, tenant=record.tenant,
                  required_node_classes=node_classes(record.graph), model_names=model_names(record.graph))
    if record.queue_timeout_seconds:
        job.deadline.FromDatetime(record.create_time + timedelta(seconds=record.queue_timeout_seconds))
    return job
