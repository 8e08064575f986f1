"""deepy.py's command line: swapped script and configs get a message showing the right order."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_config_before_script_is_explained(capsys, monkeypatch):
    sys.path.insert(0, str(REPO))
    import deepy

    monkeypatch.chdir(REPO)
    # Before: "config file 'train.py.yml' does not exist", as the config was taken for the script.
    assert deepy.main(["configs/demo.yml", "train.py"]) == 2
    err = capsys.readouterr().err
    assert "the script comes first" in err and "python deepy.py train.py CONFIG.yml" in err and "train.py.yml" not in err
