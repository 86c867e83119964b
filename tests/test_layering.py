"""Imports flow one way: cli → quickstart → stages (train, eval) → serve (HTTP and the chat REPL) → rag (retrieval,
grounded prompts and answers) → the inference core (the engine everything generates with) → model → data → hub
→ config → utils. rag may generate, so it may import the inference core, but never serve's HTTP layer."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "camelid"
LAYER = {"__main__": 7, "cli": 6, "quickstart": 5, "train": 4, "eval": 4, "serve": 3.8, "rag": 3.7,
         "engine": 3.6, "model": 3.5, "data": 3, "hub": 2, "config": 1, "utils": 0, "__init__": 0}
# The inference core still lives inside serve/ until it has a package of its own; it is a layer below rag.
CORE = {f"camelid.serve.{m}" for m in ("engine", "kv", "paged", "sampling", "detok", "waiting")}


def layer_of(module: str) -> float:
    if module in CORE:
        return LAYER["engine"]
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
