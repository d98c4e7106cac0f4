"""Package list for setuptools (everything else is in pyproject.toml).

Every ``bayes_klrl*`` package under this folder, plus ``bayes_klrl._models``: the repository's ``models/`` folder,
mapped in pyproject.toml's ``[tool.setuptools.package-dir]``. pyproject.toml alone cannot add a mapped package
to the ones it finds, and a hand-written list would silently leave out the next new subpackage.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["bayes_klrl*"]), "bayes_klrl._models"])
