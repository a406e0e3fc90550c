"""Ending a run from `GET /history/{prompt_id}` when its websocket dropped or went silent.

A history entry holds the prompt's status messages (execution_start, execution_cached, and the terminal one with
its full data) and every output node's UI output. They are replayed through the prompt's translator, so frames it
already saw are not repeated and the run ends exactly as if the socket had delivered everything. `{}` (or no entry)
means the prompt has not finished: it is queued or running.
"""

from __future__ import annotations

from typing import Any

from gpu_executor.comfyui.frames import Message
from gpu_executor.comfyui.translate import PromptTranslator
from gpu_executor.engine.events import Event

TERMINAL_MESSAGES = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def entry_of(history: Any, prompt_id: str) -> dict[str, Any] | None:
    """The prompt's entry in a /history answer; None while it has not finished."""
    entry = history.get(prompt_id) if isinstance(history, dict) else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("status"), dict) else None


def replay(entry: dict[str, Any], translator: PromptTranslator) -> list[Event]:
    """The events the translator had not produced yet; afterwards `translator.result` is set."""
    status = entry["status"]
    messages = [(m[0], m[1]) for m in status.get("messages") or ()
                if isinstance(m, list | tuple) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], dict)]
    pid = translator.prompt_id
    produced: list[Event] = []
    terminal: list[tuple[str, dict[str, Any]]] = []
    for kind, data in messages:
        if kind in TERMINAL_MESSAGES:
            terminal.append((kind, data))
        else:
            produced += translator.feed(Message(kind, {**data, "prompt_id": pid}))
    outputs = entry.get("outputs")
    for node_id, ui in (outputs.items() if isinstance(outputs, dict) else ()):
        produced += translator.feed(Message("executed", {"node": node_id, "output": ui, "prompt_id": pid}))
    if not terminal:  # an entry without its terminal message: the status says how it ended
        ok = status.get("status_str") == "success" or status.get("completed") is True
        terminal.append(("execution_success", {}) if ok else
                        ("execution_error", {"exception_type": "Unknown",
                                             "exception_message": "ComfyUI recorded the prompt as failed"}))
    for kind, data in terminal[:1]:
        produced += translator.feed(Message(kind, {**data, "prompt_id": pid}))
    return produced
