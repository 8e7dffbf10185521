"""The package's import structure, read from the source with ``ast`` (nothing is imported): no import circle between
the package's modules (function-level imports count: a late import only hides a circle), and the pure-torch core
(``maeast_fairseq.core``) imports nothing but itself, torch and the standard library."""
import ast
import os
import sys

from conftest import REPO

PACKAGE = "maeast_fairseq"
CORE = f"{PACKAGE}.core"
CORE_MAY_IMPORT = {"torch"}


def _modules():
    """``{dotted module name: path}`` of every ``.py`` file of the package."""
    root = os.path.join(REPO, PACKAGE)
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(folder, f)
    return found


def _imports(name, path, modules):
    """Every module ``name`` imports (absolute dotted names; at any depth of the file, relative ones resolved).
    ``from pkg import x`` names the submodule ``pkg.x`` when there is one, else ``pkg``."""
    is_package = os.path.basename(path) == "__init__.py"
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            subs = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in modules]
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(module)
    return out


def _graph():
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_walk_sees_the_package():
    modules, graph = _graph()
    assert CORE in modules and f"{CORE}.blocks" in modules and f"{PACKAGE}.checkpoint" in modules
    assert f"{CORE}.blocks" in graph[f"{CORE}.ssast"] and "torch" in graph[f"{CORE}.blocks"]


def test_no_import_circle():
    modules, graph = _graph()
    edges = {m: sorted(t for t in targets if t in modules and t != m) for m, targets in graph.items()}
    state, stack, circles = {}, [], []

    def visit(m):  # depth-first search; a grey node met again closes a circle
        state[m] = "grey"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "grey":
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "black"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_core_imports_only_core_torch_and_the_standard_library():
    modules, graph = _graph()
    stdlib = set(sys.stdlib_module_names)
    wrong = {}
    for m, targets in graph.items():
        if m != CORE and not m.startswith(CORE + "."):
            continue
        bad = sorted(t for t in targets
                     if not (t == CORE or t.startswith(CORE + ".") or t.split(".")[0] in CORE_MAY_IMPORT | stdlib
                             or t == "__future__"))
        if bad:
            wrong[m] = bad
    assert not wrong, f"{CORE} must import only {CORE}.*, torch and the standard library: {wrong}"


def test_every_registered_core_model_declares_its_method_facts():
    """One home per method's facts: each registered core class says what is pretraining-only and how it pools."""
    from maeast_fairseq.core.base import POOLINGS, CoreModel
    from maeast_fairseq.core.registry import CORE_MODELS

    assert set(CORE_MODELS) == {"mae_ast", "ssast", "eat"}
    for name, (core_cls, _cfg_cls) in CORE_MODELS.items():
        assert issubclass(core_cls, CoreModel) and "pretraining_only" in vars(core_cls), name
        assert core_cls.pretraining_only and core_cls.default_pooling in POOLINGS, name
        assert core_cls.is_pretraining_only(f"{core_cls.pretraining_only[0]}.weight")
        assert not core_cls.is_pretraining_only("encoder.blocks.0.norm1.weight")


def test_every_pretraining_forward_speaks_the_one_output_vocabulary():
    """One vocabulary: the three pretraining forwards return only the keys of ``core/base.py``'s scheme, with the
    shapes it states, and their own loss reads them."""
    import torch
    from conftest import tiny_core

    from maeast_fairseq.core.base import PRETRAINING_OUTPUT_KEYS
    from maeast_fairseq.core.losses import nce_mse_loss, ufo_loss

    b, frames = 2, 256  # 16 time x 8 frequency patches of 16 x 16
    x = torch.randn(b, frames, 128)
    for name, overrides in (("mae_ast", {}), ("ssast", {}), ("ssast", {"passes": "two"}), ("eat", {})):
        model = tiny_core(name, **overrides)
        out = model(x)
        label = f"{name} {overrides}"
        assert set(out) <= set(PRETRAINING_OUTPUT_KEYS), (label, sorted(set(out) - set(PRETRAINING_OUTPUT_KEYS)))
        assert {"mask", "padding_mask", "target", "pred"} <= set(out), label
        rows = b * getattr(model.cfg, "clones", 1)
        assert out["mask"].shape == (rows, 128) and out["mask"].dtype == torch.bool and out["padding_mask"] is None
        assert out["pred"].shape == out["target"].shape, label
        if name == "eat":  # the masked tokens of all rows, flattened; one CLS prediction per row
            assert out["target"].shape[0] == int(out["num_masked"]) == int(out["mask"].sum())
            assert out["cls_pred"].shape == out["cls_target"].shape == (rows, model.cfg.embed_dim)
            total = ufo_loss(out)[0]
        else:  # a row per clip, padded to the most masked tokens, with the validity of each slot
            m = int(out["mask"].sum(1).max())
            assert out["nce_pred"].shape == out["target"].shape == (b, m, 256), label
            assert out["target_valid"].shape == (b, m) and out["target_valid"].sum() == out["mask"].sum(), label
            for term in out.get("terms", {}).values():
                assert set(term) <= set(PRETRAINING_OUTPUT_KEYS) and term["pred"].shape == term["target"].shape
            total = nce_mse_loss(out)[0]
        assert torch.isfinite(total), label
