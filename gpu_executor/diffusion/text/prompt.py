"""ComfyUI's prompt emphasis syntax.

`(words)` multiplies the weight by 1.1 (nested groups multiply again), `(words:1.3)` sets it to 1.3, `\\(` and
`\\)` are literal parentheses. Square brackets have no meaning in ComfyUI (unlike A1111) and stay literal text.
"""

from __future__ import annotations

# Private-use placeholders for escaped parentheses while groups are parsed (ComfyUI uses the same idea).
_OPEN, _CLOSE = "\0\2", "\0\1"


def escape_parentheses(text: str) -> str:
    return text.replace("\\)", _CLOSE).replace("\\(", _OPEN)


def unescape_parentheses(text: str) -> str:
    return text.replace(_CLOSE, ")").replace(_OPEN, "(")


def split_groups(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced `( ... )` groups (an unclosed group runs to the end)."""
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                pieces.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")" and depth > 0:
            depth -= 1
            current += char
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Splits an (escaped) prompt into (text, weight) segments."""
    segments: list[tuple[str, float]] = []
    for piece in split_groups(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            segments.extend(weighted_segments(inner, inner_weight))
        else:
            segments.append((piece, weight))
    return segments


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """A prompt as (text, weight) segments, escapes resolved."""
    return [(unescape_parentheses(segment), weight) for segment, weight in weighted_segments(escape_parentheses(text))]
