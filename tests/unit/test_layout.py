"""The folders show the data flow, and imports follow it one way (DESIGN "Package layout"):

    cli → report → daemon → (dns, backends) → kernel → pure core (policy, plan, errors, common)

Every import in ramfw/, including those inside functions, is checked against the table below, so
an upward import (a backend parsing DNS, the snooper calling a backend, the policy touching the
kernel) fails here before review."""

import ast
import pathlib

import ramfw

ROOT = pathlib.Path(ramfw.__file__).parent

# folder (or top-level module) → the folders/modules its code may import
ALLOWED = {
    "errors": set(),
    "common": {"errors"},
    "policy": {"errors", "common", "data"},
    "plan": {"policy", "errors", "common"},
    "kernel": {"errors", "common"},
    "tls": {"errors", "common"},
    "dns": {"kernel", "policy", "errors", "common"},
    "backends": {"kernel", "plan", "policy", "errors", "common"},
    "daemon": {"dns", "backends", "kernel", "plan", "policy", "tls", "errors", "common", "data"},
    "report": {"daemon", "dns", "backends", "kernel", "plan", "policy", "tls", "errors", "common", "data"},
    "cli": {"report", "daemon", "dns", "backends", "kernel", "plan", "policy", "tls", "errors", "common", "data", "__init__"},
    "__init__": set(),
    "data": set(),
}


def _layer(module: str) -> str:
    """ramfw.dns.cache → dns; ramfw.plan → plan; ramfw → __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path):
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "ramfw":  # `from ramfw import x`: x is a module, or a name of ramfw/__init__
                for alias in node.names:
                    is_module = (ROOT / alias.name).is_dir() or (ROOT / f"{alias.name}.py").exists()
                    yield node.lineno, f"ramfw.{alias.name}" if is_module else "ramfw"
            else:
                yield node.lineno, target


def test_every_import_inside_ramfw_follows_the_data_flow():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        layer = _layer(_module_name(path))
        assert layer in ALLOWED, f"{path}: folder {layer!r} is not in the layout table; add it with its allowed imports"
        for line, target in _imports(path):
            if not (target == "ramfw" or target.startswith("ramfw.")):
                continue
            to = _layer(target)
            if to != layer and to not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {layer} imports {target}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_the_table_itself_has_no_cycle():
    """If two folders may import each other, the one-way rule means nothing."""
    for a, targets in ALLOWED.items():
        for b in targets:
            assert a not in ALLOWED.get(b, set()), f"{a} and {b} may import each other"


def test_every_folder_says_what_it_owns_and_may_import():
    for init in sorted(ROOT.rglob("__init__.py")):
        if init.parent == ROOT or init.parent.name == "data":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 25, f"{init}: needs a paragraph saying what the folder owns and may import"
        assert "import" in doc.lower(), f"{init}: the docstring must say what the folder may import"
