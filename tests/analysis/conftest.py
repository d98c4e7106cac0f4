"""The analysis scripts import their siblings (``from _common import …``): put ``analysis/`` on ``sys.path``
so that the tests import each script once, by its file name, as ``python analysis/<name>.py`` would."""

import sys
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
if str(ANALYSIS) not in sys.path:
    sys.path.insert(0, str(ANALYSIS))
