"""The house's import rule (DESIGN.md, Layout): every module imports only its own layer and the
layers below it, engine < data, models and run folders < attacks < evaluation < methods < the
trainer's settings < trainer < the command line, the claims and the benchmarks; and a Triton kernel module
(kernels/, installed as fastadv.kernels) imports nothing of fastadv but its siblings and
fastadv.backend. Read from the source with ast: nothing is imported."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the folders of the repository and the package each is installed as (setup.py's MAPPED_FOLDERS)
FOLDERS = {"fastadv": "fastadv", "kernels": "fastadv.kernels", "benchmarks": "fastadv.benchmarks"}
#: a module's layer by the longest prefix of its dotted name
LAYERS = {
    "fastadv._C": 0, "fastadv._validate": 0, "fastadv.backend": 0, "fastadv.hardware": 0, "fastadv.tuned": 0,
    "fastadv.ops": 0, "fastadv.reference": 0, "fastadv.kernels": 0, "fastadv.distributed": 0,
    "fastadv.data": 1, "fastadv.models": 1, "fastadv.ensemble": 1, "fastadv.runs": 1, "fastadv.logs": 1,
    "fastadv.attacks": 2,
    "fastadv.evaluate": 3,
    "fastadv.methods": 4,
    "fastadv.config": 5,
    "fastadv.train": 6,
    "fastadv.cli": 7, "fastadv.claims": 7, "fastadv.benchmarks": 7, "fastadv": 7,
}
KERNEL_MAY_IMPORT = ("fastadv.kernels", "fastadv.backend")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def imported(name: str, path: Path) -> set[str]:
    """The fastadv modules ``name`` (at ``path``) imports, anywhere in the file (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from package import module` imports the module
                full = f"{base}.{alias.name}"
                out.add(full if full in MODULES or full == "fastadv._C" else base)
    return {m for m in out if m == "fastadv" or m.startswith("fastadv.")}


def test_every_module_has_a_layer():
    assert MODULES and all(isinstance(layer(name), int) for name in MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(name):
    above = sorted(m for m in imported(name, MODULES[name]) if layer(m) > layer(name))
    assert not above, f"{name} (layer {layer(name)}) imports {above} from above it"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("fastadv.kernels")))
def test_a_kernel_imports_nothing_above_the_kernels(name):
    outside = sorted(m for m in imported(name, MODULES[name])
                     if not any(m == p or m.startswith(p + ".") for p in KERNEL_MAY_IMPORT))
    assert not outside, f"{name} imports {outside}: a kernel module imports only its siblings and fastadv.backend"


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: a method importing the trainer is found."""
    path = tmp_path / "bad.py"
    path.write_text("from ..train import train\n")
    assert layer("fastadv.train") > layer("fastadv.methods.bad")
    assert imported("fastadv.methods.bad", path) == {"fastadv.train"}
