"""Loading SmolLM2 into a redirected log shows none of transformers' progress bars (the GGUF conversion and
"Loading weights" bars); on a terminal they stay."""

import subprocess
import sys

import pytest

BARS = ("Loading weights", "de-quantizing GGUF tensors")


@pytest.mark.slow
def test_loading_smollm2_into_a_log_shows_no_progress_bars(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from bayes_klrl.lm.hf import smollm2_path

    try:
        smollm2_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    code = "from bayes_klrl.lm.hf import load_smollm2; print(load_smollm2()[0].config.vocab_size)"
    with open(tmp_path / "err.log", "w") as err:  # a file, not a terminal
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True, timeout=600)
    log = (tmp_path / "err.log").read_text()
    assert out.returncode == 0, log
    assert out.stdout.strip() == "49152"
    assert not [bar for bar in BARS if bar in log], log[-500:]
