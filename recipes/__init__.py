"""Recipes: YAML files and the code that applies them (installed as compress.recipes)."""
