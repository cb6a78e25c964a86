"""The patches of FairChem's trainer (trainers/fairchem/patches.py) apply only to the FairChem they were written for."""
from __future__ import annotations

import pytest

from trainers.fairchem import patches


def test_patches_refuse_a_fairchem_they_were_not_written_for(monkeypatch, capsys):
    """Each patch of FairChem's trainer checks the installed fairchem-core first: another series stops the child
    with one line naming both versions, before anything of FairChem is imported or replaced."""
    monkeypatch.setattr(patches, "installed_fairchem", lambda: "2.3.0")
    for install in (patches.install_atomic_checkpoints, patches.install_logger, patches.install_training_options):
        with pytest.raises(SystemExit) as exc:
            install(patches.TrainOptions()) if install is not patches.install_atomic_checkpoints else install()
        assert exc.value.code == 2
        [line] = capsys.readouterr().out.strip().splitlines()
        assert line.startswith(f"error: {install.__name__}: ") and "fairchem-core 1.10.x" in line and "2.3.0" in line
        assert install.fairchem_series == patches.FAIRCHEM_SERIES
    monkeypatch.setattr(patches, "installed_fairchem", lambda: "1.100.0")   # not 1.10.x either
    with pytest.raises(SystemExit):
        patches.install_logger(patches.TrainOptions())
    assert "1.100.0" in capsys.readouterr().out
