"""Loading a policy: read a file (or the embedded default), refuse hostile sizes and nesting
before any parser sees the text, parse TOML or JSON, and hand the data to the validator.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources

from ramfw.errors import PolicyError
from ramfw.policy.catalog import Catalog, default_catalog
from ramfw.policy.model import DEFAULT_SOURCE, MAX_NESTING, MAX_POLICY_BYTES, Policy
from ramfw.policy.validate import Validator


def load_policy(path: str | None, catalog: Catalog | None = None) -> Policy:
    """Load and validate a policy file (TOML or JSON); None loads the embedded default."""
    if path is None:
        text = resources.files("ramfw").joinpath("data/default-policy.toml").read_text(encoding="utf-8")
        return parse_policy(text, DEFAULT_SOURCE, fmt="toml", catalog=catalog)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_BYTES + 1)  # never more: a huge file is refused, not read
    except OSError as exc:
        raise PolicyError(path, [("(file)", f"cannot read: {exc.strerror}")]) from None
    check_size(len(raw), path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(path, [("(file)", "not UTF-8 text")]) from None
    return parse_policy(text, path, fmt=policy_format(text, path), catalog=catalog)


def policy_format(text: str, name: str, content_type: str = "") -> str:
    """"json" or "toml": by the file name's suffix or the HTTP Content-Type when they say, else
    by the text itself (a JSON policy is an object, so it starts with "{"; TOML never does)."""
    if name.endswith(".json") or "json" in content_type:
        return "json"
    if name.endswith(".toml") or "toml" in content_type:
        return "toml"
    return "json" if text.lstrip().startswith("{") else "toml"


def check_size(size: int, source: str) -> None:
    if size > MAX_POLICY_BYTES:
        raise PolicyError(source, [("(file)", f"larger than {MAX_POLICY_BYTES // 1024} KiB (refused whole, never cut): "
                                              "a policy lists registries, it is a few KiB")])


def nesting_depth(text: str, stop_at: int) -> int:
    """How deep [ and { nest in TOML or JSON text, outside strings and comments (a cheap
    single pass; stops counting at stop_at)."""
    depth = deepest = 0
    quote = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\" and quote[0] == '"':
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_at:
                    return deepest
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch == "#":  # a TOML comment (JSON has none, and '#' outside a string is invalid there)
            j = text.find("\n", i)
            i = n if j < 0 else j
        i += 1
    return deepest


def parse_policy(text: str, source: str, fmt: str = "toml", catalog: Catalog | None = None) -> Policy:
    check_size(len(text.encode("utf-8", "surrogatepass")), source)
    if nesting_depth(text, MAX_NESTING) > MAX_NESTING:
        raise PolicyError(source, [("(file)", f"arrays or tables nested deeper than {MAX_NESTING} levels: refused")])
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except RecursionError:  # the depth scan is approximate; the parser's own limit is the backstop
        raise PolicyError(source, [("(file)", "nested too deeply to parse: refused")]) from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(source, [("(file)", f"{fmt.upper()} syntax error: {exc}")]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, [("(file)", "the top level must be a table of keys")])
    return Validator(source, catalog or default_catalog()).build(data)
