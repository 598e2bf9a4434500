"""The install brings what zerotrain imports: every third-party module the package imports is provided by a
dependency declared in pyproject.toml, a module that only an extra provides is imported inside the function that
needs it (so the default install never reaches it), and every verb's --help runs through the installed
`zerotrain` command. CI runs this in a virtualenv made from nothing (.ci/run), where an undeclared module is
simply absent."""

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from conftest import REPO

PACKAGE = REPO / "zerotrain"

# Used by transformers on our behalf, never imported by name in zerotrain/: HfDeepSpeedConfig and zero.Init for
# model.hf at ZeRO-3 need accelerate. Declared, and checked to be installed, so a user's ZeRO-3 fine-tune works.
INDIRECT = {"accelerate"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec).group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {requirement_name(d) for d in project["dependencies"]}
    extras = {
        extra: {requirement_name(d) for d in deps} for extra, deps in project.get("optional-dependencies", {}).items()
    }
    return core, extras


def third_party_imports() -> dict[str, dict[str, bool]]:
    """{top-level module: {file: imported at module level}} for absolute imports in zerotrain/."""
    found: dict[str, dict[str, bool]] = {}

    def visit(node, file, top_level):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module]
            for name in names:
                root = name.split(".")[0]
                if root not in sys.stdlib_module_names and root != "zerotrain":
                    seen = found.setdefault(root, {})
                    seen[file] = seen.get(file, False) or top_level
            inner = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, file, inner)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(ast.parse(path.read_text(), filename=str(path)), path.name, True)
    return found


def providers(module: str) -> set[str]:
    return {normalize(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_every_import_is_a_declared_dependency():
    core, extras = declared()
    in_extras = set().union(*extras.values())
    problems = []
    for module, files in sorted(third_party_imports().items()):
        dists = providers(module)
        where = ", ".join(sorted(files))
        if not dists and normalize(module) in extras.get("gpu", set()) and not any(files.values()):
            continue  # the gpu extra's kernels (Triton) are not installed on CPU machines; imported where used
        if not dists:
            problems.append(
                f"{module} (imported in {where}) is not installed: declare the distribution that provides it"
            )
        elif not dists & (core | in_extras):
            problems.append(
                f"{module} (imported in {where}) comes from {', '.join(sorted(dists))}, which pyproject.toml does not declare"
            )
        elif not dists & core and any(files.values()):
            at_top = ", ".join(f for f, top in files.items() if top)
            problems.append(
                f"{module} is only in an extra but {at_top} imports it at module level: import it where it is used"
            )
    assert not problems, "\n".join(problems)


def test_indirect_dependencies_are_declared_and_installed():
    core, _ = declared()
    for dist in INDIRECT:
        assert dist in core, f"{dist} is needed at run time (see INDIRECT) but not in [project] dependencies"
        importlib.metadata.version(dist)  # raises PackageNotFoundError if the install did not bring it


def test_extras_for_the_tests_are_installed():
    """`pip install -e ".[test]"` brings every package the test suite reaches for, so no test skips for a missing one."""
    _, extras = declared()
    for dist in extras["test"] | extras["hf"]:
        importlib.metadata.version(dist)


def verbs(parser) -> list[list[str]]:
    """Every verb path of the CLI, e.g. ["config", "check"], from the parser itself."""
    import argparse

    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append([name])
                paths += [[name, *rest] for rest in verbs(sub)]
    return paths


def test_every_verb_help_runs_from_the_installed_command():
    from zerotrain.cli import build_parser

    exe = Path(sys.executable).parent / "zerotrain"
    if not exe.exists():
        exe = shutil.which("zerotrain")
    assert exe, "the `zerotrain` console script is not installed beside this Python; pip install -e . makes it"
    paths = verbs(build_parser())
    assert ["train"] in paths and ["doctor", "explain"] in paths and ["launch"] in paths
    for path in paths:
        r = subprocess.run([str(exe), *path, "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0 and "usage: zerotrain " + " ".join(path) in r.stdout, (path, r.stderr[-2000:])
