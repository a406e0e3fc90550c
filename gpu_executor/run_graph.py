"""`python -m gpu_executor run-graph GRAPH.json --output-dir DIR`: run a graph file without the platform.

The tool for debugging and fidelity checks: it runs an API-format graph (ComfyUI's "Save (API)") with the
built-in engine, prints progress, writes outputs named as ComfyUI names them, and exits non-zero with the typed
errors on failure. Exit codes: 0 succeeded, 1 a node failed, 2 the graph is invalid, 3 bad arguments,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service_runtime.settings import get_settings

EXIT_OK, EXIT_NODE_FAILED, EXIT_INVALID, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", type=Path, help="API-format workflow JSON (or a /prompt body with a 'prompt' key)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where output nodes write")
    parser.add_argument("--input-dir", type=Path, help="files LoadImage-style nodes may read (default: none)")
    parser.add_argument("--models-dir", type=Path, help="a ComfyUI models/ directory (checkpoints/, loras/, ...)")
    parser.add_argument("--custom-nodes", type=Path, action="append", default=[],
                        help="a custom_nodes directory (repeatable)")
    parser.add_argument("--tokenizer-dir", type=Path,
                        help="CLIP tokenizer files (vocab.json, merges.txt); default: COMFYMESH_TOKENIZER_DIR, "
                             "else derived from the clip-anytorch package")
    parser.add_argument("--temp-dir", type=Path, help="where preview nodes write (default: OUTPUT_DIR/../temp)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="run the valid output branches even if others are invalid (ComfyUI's behaviour)")


def _load_graph(path: Path) -> Any:
    # json keeps integers exact (seeds up to 2^64 - 1).
    document = json.loads(path.read_text())
    if isinstance(document, dict) and isinstance(document.get("prompt"), dict) and "class_type" not in document:
        return document["prompt"]
    return document


def _input_files(directory: Path | None) -> dict[str, Path]:
    if directory is None:
        return {}
    return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}


def run(args: argparse.Namespace) -> int:
    # Imported here: `python -m gpu_executor serve` shares this module's argument parser and must not load torch.
    from gpu_executor.diffusion.text.conditioning import configure_tokenizer_dir
    from gpu_executor.engine import runtime
    from gpu_executor.engine.console import ConsoleSink
    from gpu_executor.engine.engine import Engine, ExecutionRequest
    from gpu_executor.engine.events import Cancelled, Failed, Succeeded
    from gpu_executor.engine.registry import build_registry

    try:
        prompt = _load_graph(args.graph)
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": "WORKFLOW_MALFORMED", "message": f"cannot read {args.graph}: {exc}"}))
        return EXIT_INVALID
    output_dir: Path = args.output_dir
    temp_dir: Path = args.temp_dir or output_dir.parent / "temp"
    input_dir: Path = args.input_dir or output_dir.parent / "input"
    for directory in (output_dir, temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    runtime.bind_models_root(args.models_dir)
    configure_tokenizer_dir(args.tokenizer_dir or get_settings().tokenizer_dir)
    registry = build_registry(args.custom_nodes)
    for problem in registry.errors:
        print(f"warning: custom nodes {problem.pack}{'/' + problem.node_class if problem.node_class else ''} "
              f"skipped: {problem.error}", file=sys.stderr)
    interrupt = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupt.set())
    request = ExecutionRequest(execution_id="local", prompt=prompt, output_dir=output_dir, temp_dir=temp_dir,
                               input_dir=input_dir, inputs=_input_files(args.input_dir),
                               allow_partial=args.allow_partial)
    final = Engine(registry).execute(request, ConsoleSink(), interrupt)
    if isinstance(final, Succeeded):
        for ref in final.outputs:
            base = output_dir if ref.type == "output" else temp_dir
            print(base / ref.subfolder / ref.filename)
        return EXIT_OK
    if isinstance(final, Cancelled):
        return EXIT_INTERRUPTED
    assert isinstance(final, Failed)
    if final.validation is not None:
        for error in final.validation.all_errors():
            print(json.dumps({"error": "WORKFLOW_INVALID", **{k: str(v) for k, v in asdict(error).items()}}))
        return EXIT_INVALID
    print(json.dumps({"error": final.reason, "message": final.message, "node_id": final.node_id,
                      "class_type": final.class_type, "exception_type": final.exception_type}))
    print(final.traceback, file=sys.stderr)
    return EXIT_NODE_FAILED
