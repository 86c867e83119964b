"""Imports flow one way, down these ranks: cli → quickstart and recipe (run stages end to end) → the stages train, eval and
serve (HTTP) → rag (retrieval, grounded prompts) → engine (the inference core every stage generates with) → model →
data → hub → config → utils. Modules of one rank never import each other's packages, so no stage leans on another."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "camelid"
LAYER = {
    "__main__": 10,
    "cli": 9,
    "quickstart": 8,
    "recipe": 8,
    "train": 7,
    "eval": 7,
    "serve": 7,
    "rag": 6,
    "engine": 5,
    "model": 4,
    "data": 3,
    "hub": 2,
    "rundir": 2,
    "e5s1": 1,
    "static_encoder": 1,
    "lora_dropout": 1,
    "allocator": 1,
    "config": 1,
    "utils": 0,
    "__init__": 0,
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYER[parts[1] if len(parts) > 1 else "__init__"]


def test_imports_flow_downwards():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        mod = ".".join(rel.parts)
        mine = layer_of(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("camelid"):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("camelid")]
            for t in targets:
                same_package = t.split(".")[:2] == mod.split(".")[:2]
                if not same_package and layer_of(t) >= mine and t != "camelid":
                    bad.append(f"{mod} imports {t}")
    assert not bad, bad
