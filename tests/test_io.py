"""Files written through the core get the permissions any new file gets (the umask's), not the temporary
file's private ones; a failed write leaves nothing behind."""

import os
import stat

import pytest

from peft_apps.core.io import atomic_write


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        p = atomic_write(tmp_path / "sub" / "out.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode and p.read_text() == "{}"
    assert [x.name for x in p.parent.iterdir()] == ["out.json"]  # no temporary file left
