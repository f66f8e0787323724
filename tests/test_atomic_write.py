"""One way to write a file (issue 21): lesson 00's `atomic_write`, which `atomic_save`, the tensor cache, `unet-predict`'s
PNGs and the ONNX export all go through; its temporary files are the ones `clean_tmp` deletes after a kill -9."""
import errno, os, signal, subprocess, sys, textwrap, time
from unittest import mock

import pytest
import torch
from PIL import Image
from fastcore import test as fc

from unet_tutorial.core import CannotWrite, atomic_write
from unet_tutorial.checkpoints import _PID_TMP, atomic_save, check_writable, clean_tmp
from unet_tutorial.inference import _save_png


def test_the_temporary_name_holds_the_process_id(tmp_path):
    seen = []
    atomic_write(tmp_path/'a.bin', lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b'x')))
    assert seen[0].startswith('.a.bin.') and (m := _PID_TMP.match(seen[0])) and int(m[1]) == os.getpid(), seen
    assert [p.name for p in tmp_path.iterdir()] == ['a.bin']


def test_overwrite_false_and_the_umask(tmp_path):
    "Moved from lesson 00: overwrite=False refuses an existing file (naming it, leaving no temporary file); a new file gets open()'s mode under the umask."
    d = tmp_path
    atomic_write(d/'a.txt', lambda tmp: tmp.write_text('first')); fc.test_eq((d/'a.txt').read_text(), 'first')
    fc.test_fail(lambda: atomic_write(d/'a.txt', lambda tmp: tmp.write_text('new'), overwrite=False), contains='a.txt')
    fc.test_eq((sorted(p.name for p in d.iterdir()), (d/'a.txt').read_text()), (['a.txt'], 'first'))   # no temporary file left
    old = os.umask(0o027)
    try: atomic_write(d/'b.txt', lambda tmp: tmp.write_text('x'), overwrite=False); fc.test_eq(oct((d/'b.txt').stat().st_mode & 0o777), oct(0o640))
    finally: os.umask(old)


def test_a_file_made_meanwhile_is_never_replaced(tmp_path):
    "overwrite=False: a file that appears while the new one is written stays, and the error names it (not the temporary file)."
    f = tmp_path/'cat_mask.png'
    def racer(tmp): f.write_bytes(b'the user'); tmp.write_bytes(b'ours')
    with pytest.raises(FileExistsError) as e: atomic_write(f, racer, overwrite=False)
    assert e.value.filename == str(f) and f.read_bytes() == b'the user'
    assert [p.name for p in tmp_path.iterdir()] == ['cat_mask.png']
    with mock.patch('os.link', side_effect=OSError(errno.EPERM, 'Operation not permitted')):   # no hard links here
        with pytest.raises(FileExistsError): atomic_write(f, lambda tmp: tmp.write_bytes(b'ours'), overwrite=False)
        atomic_write(tmp_path/'new.png', lambda tmp: tmp.write_bytes(b'ours'), overwrite=False)
    assert (f.read_bytes(), (tmp_path/'new.png').read_bytes()) == (b'the user', b'ours')


def test_png_writes_name_the_users_file(tmp_path):
    im, f = Image.new('RGB', (4, 3)), tmp_path/'o'/'cat_overlay.png'
    _save_png(im, f, overwrite=False)
    assert Image.open(f).size == (4, 3)
    with pytest.raises(FileExistsError) as e: _save_png(im, f, overwrite=False)
    assert e.value.filename == str(f)
    with mock.patch.object(Image.Image, 'save', side_effect=OSError(errno.EROFS, 'Read-only file system')):
        with pytest.raises(CannotWrite, match=rf"^{f}: cannot write it \(Read-only file system\)"): _save_png(im, f, overwrite=True)
    assert sorted(p.name for p in f.parent.iterdir()) == ['cat_overlay.png']


def test_a_module_is_saved_not_called(tmp_path):
    "`atomic_save` takes a function of the temporary path as a writer, but a model (callable too) is an object to save."
    m = torch.nn.Linear(2, 1)
    atomic_save(m, tmp_path/'m.pt')
    assert isinstance(torch.load(tmp_path/'m.pt', weights_only=False), torch.nn.Linear)


def test_kill_9_leftovers_are_cleaned(tmp_path):
    "A writer killed with -9 half-way leaves its temporary file; `clean_tmp` keeps it while the process runs, deletes it once it is gone."
    ready = tmp_path/'ready'
    code = textwrap.dedent(f"""
        import time; from pathlib import Path
        from unet_tutorial.core import atomic_write
        def slow(tmp): tmp.write_bytes(b'half'); Path({str(ready)!r}).touch(); time.sleep(60)
        atomic_write(Path({str(tmp_path/'out'/'best.pt')!r}), slow)""")
    (tmp_path/'out').mkdir()
    p = subprocess.Popen([sys.executable, '-c', code])
    try:
        for _ in range(600):
            if ready.exists() or p.poll() is not None: break
            time.sleep(0.05)
        assert ready.exists(), 'the writer did not start'
        (left,) = (tmp_path/'out').iterdir()
        assert clean_tmp(tmp_path/'out', pid_only=True) == [] and left.exists()   # still running: kept
    finally: os.kill(p.pid, signal.SIGKILL); p.wait()
    assert _PID_TMP.match(left.name) and not (tmp_path/'out'/'best.pt').exists()
    assert clean_tmp(tmp_path/'out') == [left] and list((tmp_path/'out').iterdir()) == []   # a run folder's mode


# moved whole from lesson 09 (issue 21): the edge cases of `atomic_save`, `clean_tmp` and `check_writable`

def full_disk(fd): raise OSError(errno.ENOSPC, 'No space left on device')


class FullFile:   # a file on a full disk, as torch's writer meets it: it reports '[enforce fail ...] unexpected pos'
    def __init__(self, f): self.f = f
    def write(self, b): raise OSError(errno.ENOSPC, 'No space left on device')
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()


def test_atomic_save_files_get_the_umask_s_permissions(tmp_path):
    d = tmp_path
    old = os.umask(0o027)
    try:
        for f in ('x.pt', 'h.json', 'r.md'):
            atomic_save({'x.pt': {'a': torch.ones(2)}, 'h.json': [1, 2], 'r.md': '# hi\n'}[f], d/f)
            assert oct((d/f).stat().st_mode & 0o777) == oct(0o640), f
    finally: os.umask(old)


def test_a_full_disk_at_fsync_names_the_file(tmp_path):
    d = tmp_path
    with mock.patch('os.fsync', full_disk):
        with pytest.raises(CannotWrite) as e: atomic_save({'a': torch.ones(2)}, d/'x.pt')
        assert f"{d/'x.pt'}: cannot write it (No space left" in str(e.value)
        with pytest.raises(CannotWrite, match='No space left'): atomic_save([1], d/'h.json')
    assert sorted(p.name for p in d.iterdir() if p.name.endswith('.tmp')) == []


def test_a_full_disk_in_torch_save_keeps_the_old_file(tmp_path):
    d = tmp_path
    atomic_save({'a': torch.ones(2)}, d/'x.pt'); before = (d/'x.pt').read_bytes()
    fdopen = os.fdopen
    with mock.patch('os.fdopen', lambda fd, mode: FullFile(fdopen(fd, mode))):
        with pytest.raises(CannotWrite) as e: atomic_save({'a': torch.zeros(1000)}, d/'x.pt')
        assert f"{d/'x.pt'}: cannot write it (No space left on device)" in str(e.value)
    # torch's own report of a failed write, without the file's OSError: still a CannotWrite naming the file
    with mock.patch.object(torch, 'save', side_effect=RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0')):
        with pytest.raises(CannotWrite, match=r'x\.pt: cannot write it'): atomic_save({'model': {}}, d/'x.pt')
    assert (d/'x.pt').read_bytes() == before and torch.equal(torch.load(d/'x.pt')['a'], torch.ones(2))   # the old file is intact
    assert [p.name for p in d.iterdir()] == ['x.pt']                                                    # and no temporary file


def test_clean_tmp_keeps_what_is_not_a_leftover(tmp_path):
    d = tmp_path
    for f in ('.last.pt.ab_cd123.tmp', '.history.json.k2j3h4g5.tmp', 'keep.tmp', '.last.pt.tmp', 'notes.txt'): (d/f).write_text('x')
    (d/'sub').mkdir(); (d/'sub'/'.best.pt.zzzzzzzz.tmp').write_text('x')
    assert sorted(p.name for p in clean_tmp(d)) == ['.history.json.k2j3h4g5.tmp', '.last.pt.ab_cd123.tmp']
    assert (d/'keep.tmp').exists() and (d/'.last.pt.tmp').exists() and (d/'sub'/'.best.pt.zzzzzzzz.tmp').exists()
    assert clean_tmp(d/'nowhere') == []
    dead = subprocess.Popen([sys.executable, '-c', '']); dead.wait()   # an unet-predict killed with -9 leaves .NAME.PID.tmp
    for f in (f'.a_mask.png.{dead.pid}.tmp', f'.b_mask.png.{os.getpid()}.tmp', f'.c.png.x1y2z3w4.{dead.pid}.tmp'): (d/f).write_text('x')
    assert sorted(p.name for p in clean_tmp(d, pid_only=True)) == [f'.a_mask.png.{dead.pid}.tmp', f'.c.png.x1y2z3w4.{dead.pid}.tmp']
    assert clean_tmp(d) == []                                               # a running process's file stays, in both modes
    (d/f'.b_mask.png.{os.getpid()}.tmp').unlink()


def test_check_writable_names_the_folder_and_why(tmp_path):
    d = tmp_path; (d/'notes.txt').write_text('x')
    assert check_writable(d/'new'/'out') == d/'new'/'out' and list((d/'new'/'out').iterdir()) == []
    with pytest.raises(CannotWrite, match='it is a file, not a folder'): check_writable(d/'notes.txt')
    with pytest.raises(CannotWrite) as e: check_writable(d/'notes.txt'/'out', '--out')
    assert f"{d/'notes.txt'/'out'}: cannot write into this --out" in str(e.value)
    with mock.patch('os.fsync', full_disk):
        with pytest.raises(CannotWrite, match='No space left'): check_writable(d)
