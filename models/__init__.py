"""The shipped model files: one task per file (``task(**overrides) -> bayes_klrl.Task``); see ``bayes_klrl.modelfile``.

This folder is installed as the package ``bayes_klrl._models`` (``[tool.setuptools.package-dir]`` in
pyproject.toml), so a wheel install finds the same files by name; nothing here is imported by this file.
"""
