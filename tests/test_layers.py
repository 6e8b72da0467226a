"""The layers of the code and the one way its imports run (README, "Code map"), read from the source itself.

    stages (pipeline/*.py, pipeline/reward/, pipeline/ppo/, data_prep/)
        -> analysis/ (summary, report, health, model card)  -> lm/ -> common/
        -> lm/ (sampling, log-probs, scoring, packing)       -> common/

Nothing in common/ imports lm/, analysis/ or a stage; nothing in lm/ imports analysis/ or a stage; nothing in
analysis/ imports a stage; a stage imports no other stage (only online.py, what GRPO, RLOO and DPO share); and no
module imports itself back through another, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "data_prep")

# What each layer may import from the project (itself included); every other module is a stage.
ALLOWED = {
    "pipeline.common": ("pipeline.common",),
    "pipeline.lm": ("pipeline.lm", "pipeline.common"),
    "pipeline.analysis": ("pipeline.analysis", "pipeline.lm", "pipeline.common"),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(module imported, line) for each import of a project module in `path`, at any depth of the file."""
    found = []
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] in PACKAGES:
                # `from pipeline.common import outputs` imports the module pipeline.common.outputs
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if module_path(sub, root) else base, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
    return found


def module_path(name: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def source_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))


# A stage (a script in pipeline/, a stage package such as pipeline/ppo/, data_prep) may import the layers, the module
# GRPO/RLOO/DPO share, and its own package.
STAGE_MAY_IMPORT = ("pipeline.common", "pipeline.lm", "pipeline.analysis", "pipeline.online")


def layer_of(name: str) -> str:
    """The layer of a module, or for a stage its own package (pipeline.ppo, data_prep) or module (pipeline.sft)."""
    layer = next((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), None)
    if layer:
        return layer
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" else parts[0]


def allowed_imports(layer: str) -> tuple[str, ...]:
    return ALLOWED.get(layer) or (layer, *STAGE_MAY_IMPORT)


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in source_files(root):
        layer = layer_of(module_name(path, root))
        for imported, line in project_imports(path, root):
            if imported in PACKAGES:  # `import pipeline` installs the log filters (pipeline/__init__.py)
                continue
            if not any(imported == ok or imported.startswith(ok + ".") for ok in allowed_imports(layer)):
                found.append(f"{path.relative_to(root)}:{line} ({layer}) imports {imported}")
    return found


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Cycles in the graph of module-to-module imports (a package's __init__ counted as its own module)."""
    graph = {
        module_name(p, root): {m for m, _ in project_imports(p, root) if module_path(m, root)}
        for p in source_files(root)
    }
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt in PACKAGES or node.startswith(nxt + "."):
                continue  # a package's own __init__ (imported on the way to any submodule) is no edge back
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_each_layer_imports_only_the_layers_below_it():
    assert violations() == []


def test_no_import_cycles():
    assert import_cycles() == []


@pytest.mark.parametrize(
    "module, line",
    [
        ("pipeline/common/outputs.py", "from pipeline.sft import main as _sft_main\n"),  # a stage
        ("pipeline/common/config.py", "from pipeline.lm.sampling import generate\n"),  # a layer above
        ("pipeline/lm/scoring.py", "from pipeline.analysis.report import write_report\n"),
        ("pipeline/analysis/health.py", "from pipeline.ppo.core import masked_mean\n"),
        ("pipeline/dpo.py", "from pipeline.reward import main as _reward_main\n"),  # a stage imports a stage
        ("pipeline/ppo/trainer.py", "from pipeline.evaluate import main as _evaluate\n"),
    ],
)
def test_the_rule_catches_an_upward_import(tmp_path, module, line):
    """A copy of the tree where a lower layer imports upward fails the rule, naming the file and the import."""
    for path in source_files():
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    target = tmp_path / module
    target.write_text(target.read_text() + "\n\ndef _late():\n    " + line)
    found = violations(tmp_path)
    imported = line.split()[1]
    assert len(found) == 1 and found[0].startswith(module) and found[0].endswith(imported)


def test_a_cycle_inside_one_layer_is_found(tmp_path):
    """packing -> logprobs -> packing (the shape of the old sampling <-> packing cycle), even through a function."""
    for path in source_files():
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    packing = tmp_path / "pipeline/lm/packing.py"
    packing.write_text(
        packing.read_text() + "\n\ndef _late():\n    from pipeline.lm.logprobs import response_logits\n"
    )
    assert import_cycles(tmp_path) == [["pipeline.lm.packing", "pipeline.lm.logprobs", "pipeline.lm.packing"]]
