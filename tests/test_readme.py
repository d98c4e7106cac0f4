"""The README's Python example runs as printed (with fewer steps), so the documented API cannot drift."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use it from Python") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    code = code.replace("steps=500", "steps=3").replace("num_samples=1000", "num_samples=20")
    monkeypatch.chdir(tmp_path)  # it writes runs/py
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    rows = namespace["comparison"].rows
    assert [row.method for row in rows] == ["exact", "rl", "grpo"] and rows[0].kl_q_to_posterior == 0.0
    assert (tmp_path / "runs/py/metrics.json").is_file()


def test_every_name_the_docs_show_imports_as_shown():
    """``bk.X`` in the README, docs/ and the notebooks is an attribute of ``bayes_klrl``; every dotted
    ``bayes_klrl.a.b`` and ``from bayes_klrl… import …`` they show resolves."""
    import importlib

    import bayes_klrl as bk

    root = README.parent
    texts = {p.relative_to(root): p.read_text(encoding="utf-8") for p in [README, *root.glob("docs/*.md")]}
    texts.update({p.relative_to(root): p.read_text(encoding="utf-8") for p in root.glob("notebooks/*.py")})
    missing = []
    for path, text in texts.items():
        missing += [
            f"{path}: bk.{n}" for n in sorted(set(re.findall(r"\bbk\.([A-Za-z_]\w*)", text))) if not hasattr(bk, n)
        ]
        for module, names in re.findall(r"^\s*from (bayes_klrl[\w.]*) import ([\w, ]+)$", text, flags=re.M):
            mod = importlib.import_module(module)
            missing += [f"{path}: {module}.{n}" for n in map(str.strip, names.split(",")) if not hasattr(mod, n)]
        for dotted in sorted(set(re.findall(r"`(bayes_klrl(?:\.\w+)+)`", text))):
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                try:
                    for attr in parts[i:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    missing.append(f"{path}: {dotted}")
                break
    assert not missing, missing
