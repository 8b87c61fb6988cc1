"""The trainer's helper commands given a folder that is not a workdir: one
``error:`` line, never a traceback."""

import pytest

from train import bundle as train_bundle, plot


@pytest.mark.parametrize("command,message", [
    (train_bundle.main, "is not a training workdir"),
    (plot.main, "nothing to plot"),
])
def test_a_folder_that_is_not_a_workdir_is_one_error(tmp_path, command,
                                                     message):
    (tmp_path / "notes.txt").write_text("mine")
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SystemExit, match=rf"^error: .*{message}"):
            command([str(folder)])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
