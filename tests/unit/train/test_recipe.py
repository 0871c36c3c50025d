"""The recipe object: its attributes are all declared up front, and a failure in setup reaches the user as
itself (the cleanup never replaces it)."""

from __future__ import annotations

import ast
import inspect

import pytest

from train import recipe as recipe_mod
from train.config import load_train_config


def test_every_attribute_is_declared_in_init():
    tree = ast.parse(inspect.getsource(recipe_mod.SFTRecipe))
    declared, assigned = set(), {}
    for fn in (n for n in tree.body[0].body if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(fn):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for t in targets:
                for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                    if (
                        isinstance(el, ast.Attribute)
                        and isinstance(el.value, ast.Name)
                        and el.value.id == "self"
                    ):
                        (
                            declared.add(el.attr)
                            if fn.name == "__init__"
                            else assigned.setdefault(el.attr, fn.name)
                        )
    assert declared, "no attributes found in __init__"
    late = {attr: fn for attr, fn in assigned.items() if attr not in declared}
    assert not late, f"attributes first created outside __init__: {late}"
    source = inspect.getsource(recipe_mod)
    assert "getattr(self" not in source and "hasattr(self" not in source


def test_a_setup_failure_before_distributed_init_reaches_the_user(tmp_path, repo_root):
    missing = tmp_path / "no-such-dataset"
    cfg = load_train_config(
        repo_root / "configs" / "tiny-cpu.yaml", [f"data.path={missing}", f"output_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(
        ValueError, match=r"data\.path=.*no-such-dataset: no manifest\.json; build the dataset"
    ):
        recipe_mod.run_recipe(cfg, repo_root / "configs" / "tiny-cpu.yaml")
    assert not (tmp_path / "run").exists()  # nothing was started, nothing written


def test_an_unknown_deepspeed_config_fails_before_distributed_init(tmp_path, repo_root):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    cfg = load_train_config(
        repo_root / "configs" / "tiny-cpu.yaml",
        [f"data.path={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "distributed.deepspeed=zero9"],
    )
    recipe = recipe_mod.SFTRecipe(cfg, repo_root / "configs" / "tiny-cpu.yaml")
    with pytest.raises((ValueError, FileNotFoundError), match="zero9"):
        recipe.setup()
    assert recipe.rank == 0 and recipe.engine is None
    recipe.close_after_failure()  # the cleanup of a failed setup raises nothing
