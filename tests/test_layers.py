"""Imports run one way (docs/architecture.md): every module of the package is parsed and
each of its imports, at module level or inside a function, must go to its own layer or
one below it, and no verb may import another verb."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "dgtalker"

# lowest first; a module belongs to the first layer with a prefix matching its name
LAYERS = [
    ("engine", ["dgtalker._engine", "dgtalker._C"]),
    ("ops", ["dgtalker.ops", "dgtalker.reference"]),
    ("utility", ["dgtalker.data", "dgtalker.audio", "dgtalker.camera", "dgtalker.io", "dgtalker.metrics",
                 "dgtalker.checkpoint"]),
    # inference: how a talker turns speech into frames (Talker.render and dgtalker.render both use it)
    ("models", ["dgtalker.models", "dgtalker.talker", "dgtalker.prior", "dgtalker.inference"]),
    ("verbs", ["dgtalker.eval", "dgtalker.render", "dgtalker.train", "dgtalker.preprocess", "dgtalker.invert"]),
    ("commands", ["dgtalker.cli", "dgtalker.__main__", "dgtalker.demo", "dgtalker.info"]),
]
# the verbs are siblings: none imports another (dgtalker.invert is the old name of train.invert)
VERBS = {"dgtalker.eval": "eval", "dgtalker.render": "render", "dgtalker.train": "train",
         "dgtalker.invert": "train", "dgtalker.preprocess": "preprocess"}
# (importer, imported): the only imports allowed to go up, each with its reason
ALLOWED = {
    # the checkpoint reader/writer is a utility, but it also builds the prior's generator
    # and template from a file (call time only)
    ("dgtalker.checkpoint", "dgtalker.models.generator"),
    ("dgtalker.checkpoint", "dgtalker.models.template"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel.with_suffix(".py")).is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _imports(path: Path, name: str | None = None, source: str | None = None):
    """(line, imported module) of every dgtalker import in the file (or in ``source``, as
    module ``name``), relative ones resolved; ``from pkg import name`` counts as
    ``pkg.name`` when that is a module."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                yield node.lineno, full if _is_module(full) else target


def layer_of(module: str):
    for rank, (layer, prefixes) in enumerate(LAYERS):
        if module.endswith("_cli"):
            return len(LAYERS) - 1, "commands"
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank, layer
    return None


def _verb(module: str):
    return next((v for p, v in VERBS.items() if module == p or module.startswith(p + ".")), None)


def upward_imports(paths, sources=None) -> list[str]:
    """Every import that goes up the layers or from one verb to another, as text;
    ``sources``: {path: text} to check instead of the files' contents."""
    bad = []
    for path in paths:
        src = _module_name(path)
        if src == "dgtalker":
            continue  # the package's lazy attribute table
        for line, dst in _imports(path, src, (sources or {}).get(path)):
            if dst == "dgtalker" or not dst.startswith("dgtalker.") or (src, dst) in ALLOWED:
                continue  # the package root imports nothing eagerly
            a, b = layer_of(src), layer_of(dst)
            where = f"{path.relative_to(PACKAGE.parent)}:{line}: {src} ({a and a[1]}) imports {dst} ({b and b[1]})"
            if a is None or b is None:
                bad.append(where + ": a module with no layer (add it to tests/test_layers.py and the docs)")
            elif b[0] > a[0]:
                bad.append(where + ": up the layers")
            elif a[1] == b[1] == "verbs" and _verb(src) != _verb(dst):
                bad.append(where + ": one verb importing another")
    return bad


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in PACKAGE.rglob("*.py")
               if _module_name(p) != "dgtalker" and layer_of(_module_name(p)) is None]
    assert not missing, missing


def test_imports_run_one_way():
    bad = upward_imports(sorted(PACKAGE.rglob("*.py")))
    assert not bad, "\n".join(bad)


def test_allowed_exceptions_import_at_call_time_only():
    """An allowed upward import may not run when the module is imported."""
    for src, dst in ALLOWED:
        path = PACKAGE.parent / Path(*src.split(".")).with_suffix(".py")
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text())
        top = {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        assert not {line for line, d in _imports(path) if d == dst} & top, (src, dst)


@pytest.mark.parametrize("source, why", [
    ("from ..train.identity import train_step\n", "up the layers"),
    ("def f():\n    from ..render import render_talker\n", "up the layers"),  # function level counts too
    ("import dgtalker.cli\n", "up the layers"),
])
def test_the_check_catches_upward_imports(source, why):
    """The check itself: a function-level import of a higher layer in a lower module is
    reported (the models layer's generator importing a verb or the command line)."""
    probe = PACKAGE / "models" / "generator.py"
    bad = upward_imports([probe], {probe: source})
    assert bad and why in bad[0], bad


def test_one_verb_importing_another_is_caught():
    probe = PACKAGE / "eval" / "evaluate.py"
    bad = upward_imports([probe], {probe: "def f():\n    from ..train.losses import leak_loss\n"})
    assert bad and "one verb importing another" in bad[0], bad
