"""The distribution holds every package of the source tree (the wheel itself is checked by
`make wheel-check`, which installs it alone and trains and evaluates with it)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    spec = importlib.util.spec_from_file_location("fastadv_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only under __main__
    return module


def _folders_with_python(root: Path):
    """Every folder under ``root`` (itself included) that holds a Python file."""
    return sorted({path.parent for path in root.rglob("*.py") if "__pycache__" not in path.parts})


def test_every_folder_with_python_files_is_a_package_of_the_distribution():
    setup = _setup_module()
    packages, package_dir = setup.packages()
    installed_as = {"fastadv": "fastadv", **setup.MAPPED_FOLDERS}
    expected = set()
    for folder, name in installed_as.items():
        for directory in _folders_with_python(ROOT / folder):
            relative = directory.relative_to(ROOT / folder)
            dotted = ".".join((name,) + relative.parts)
            # find_packages skips a folder without __init__.py: its modules would be left out.
            assert (directory / "__init__.py").exists(), f"{directory.relative_to(ROOT)} has no __init__.py"
            expected.add(dotted)
    assert expected <= set(packages), f"left out of the distribution: {sorted(expected - set(packages))}"
    assert {"fastadv.methods", "fastadv.attacks", "fastadv.ops", "fastadv.kernels", "fastadv.benchmarks"} <= set(packages)


def test_mapped_folders_install_under_fastadv_and_never_at_the_top_level():
    setup = _setup_module()
    packages, package_dir = setup.packages()
    assert all(name == "fastadv" or name.startswith("fastadv.") for name in packages)
    for folder, name in setup.MAPPED_FOLDERS.items():
        assert package_dir[name] == folder
