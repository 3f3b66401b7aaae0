"""The package's layers: commands -> training -> evaluation (and classical, gallery, explain) -> tasks -> data, models -> base. A module may
import its own layer and those below it, never one above (and so no import circles between layers)."""

import ast
from pathlib import Path

import imgrec

SOURCE = Path(imgrec.__file__).parent
LAYERS = {"commands": 5, "training": 4, "gan": 4, "evaluation": 3, "gallery": 3, "tasks": 2, "data": 1, "models": 1,
          "robustness": 1, "explain": 3, "classical": 3}
BASE = 0  # config, checkpoint, errors, registry, runtime


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], BASE) if len(parts) > 1 else BASE


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgrec"):
            names = [node.module] if node.module != "imgrec" else [f"imgrec.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("imgrec")]
    return found


def test_no_module_imports_a_layer_above_its_own():
    checked, upward = 0, []
    for path in SOURCE.rglob("*.py"):
        module = "imgrec." + ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        for line, imported in imports(path):
            checked += 1
            if layer(imported) > layer(module):
                upward.append(f"{path.relative_to(SOURCE)}:{line} imports {imported}")
    assert checked > 100  # every module was read
    assert upward == []
