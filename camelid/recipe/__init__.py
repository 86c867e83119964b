"""Recipes: one YAML file runs a path of camelid's verbs (clean → tok extend → pt → sft → dpo → eval → export →
kb add → serve) with lineage, caching and resume. spec.py reads and checks the file, lineage.py fingerprints what
each stage was made from, runner.py plans and runs the stages."""

from camelid.recipe.runner import describe, plan, run, status_table
from camelid.recipe.spec import load_recipe

__all__ = ["describe", "load_recipe", "plan", "run", "status_table"]
