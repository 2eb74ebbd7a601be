"""One job per output folder: a second job is refused while the first holds the folder."""

import pytest

from medcf.jobs.prepare import PreparationRun
from medcf.outputs.lock import OutputFolderInUse, OutputFolderLock
from medcf.prepare import ChestPreparer


def test_a_held_folder_refuses_a_second_job_and_is_free_again_after(tmp_path):
    with OutputFolderLock(tmp_path / "out"):
        with pytest.raises(OutputFolderInUse, match="another medcf job is writing to this folder"):
            with OutputFolderLock(tmp_path / "out"):
                pass
        with pytest.raises(OutputFolderInUse):
            PreparationRun(tmp_path, tmp_path / "out", ChestPreparer(64), workers=1, progress=False).run()
    with OutputFolderLock(tmp_path / "out"):
        pass
