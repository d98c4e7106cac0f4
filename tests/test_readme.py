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
