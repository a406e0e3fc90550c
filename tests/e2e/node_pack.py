"""A custom node pack the e2e platforms load (COMFYMESH_CUSTOM_NODES_DIRS): nodes that take their time
(cooperatively interruptible), fail deterministically, or kill their worker process."""

PACK_SOURCE = '''
import os
import time

from gpu_executor.engine import runtime


class SlowPassthrough:
    """Passes an image through after `seconds`, reporting progress and honouring interrupts every 20 ms."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "go"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 1.0, "min": 0, "max": 600})}}

    def go(self, image, seconds):
        steps = max(1, int(seconds / 0.02))
        bar = runtime.ProgressBar(steps)
        for _ in range(steps):
            runtime.check_interrupted()
            time.sleep(0.02)
            bar.update(1)
        return (image,)


class FailOnPurpose:
    """Raises: a deterministic node failure (never retried)."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "go"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def go(self, image):
        raise ValueError("this node always fails")


NODE_CLASS_MAPPINGS = {"SlowPassthrough": SlowPassthrough, "FailOnPurpose": FailOnPurpose}
'''


def image_graph(*, seconds: float = 0.0, fail: bool = False, prefix: str = "e2e/out", width: int = 32,
                height: int = 16) -> dict[str, object]:
    """EmptyImage → ImageInvert → [SlowPassthrough | FailOnPurpose] → SaveImage."""
    graph: dict[str, object] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                     "color": 0x336699}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    }
    last = "2"
    if seconds:
        graph["4"] = {"class_type": "SlowPassthrough", "inputs": {"image": [last, 0], "seconds": seconds}}
        last = "4"
    if fail:
        graph["5"] = {"class_type": "FailOnPurpose", "inputs": {"image": [last, 0]}}
        last = "5"
    graph["3"] = {"class_type": "SaveImage", "inputs": {"images": [last, 0], "filename_prefix": prefix}}
    return graph
