"""The users' download path, `get_pets(root, download=True)`, on data generated here (no network in tests).

torchvision's `OxfordIIITPet(download=True)` fetches the two official archives only when the layout is missing. Its
downloader is replaced by a stand-in: one that fails (nothing may be fetched when the data is there) or one that
"extracts" a synthetic copy (the archives are asked for, then the copy is used).
"""
import pytest
import torchvision.datasets.oxford_iiit_pet as tv_pet
from unet_tutorial.data import get_pets, read_split
from unet_tutorial.synthetic import make_synthetic_pets

def test_download_skips_existing_copy(tmp_path, monkeypatch):
    root = make_synthetic_pets(tmp_path/'pets', n_trainval=8, n_test=4, size=32)
    def no_network(*a, **k): raise AssertionError('download attempted although the data is there')
    monkeypatch.setattr(tv_pet, 'download_and_extract_archive', no_network)
    assert get_pets(root, download=True) == root
    assert (len(read_split(root, 'trainval')), len(read_split(root, 'test'))) == (8, 4)

def test_download_fetches_official_archives(tmp_path, monkeypatch):
    root, asked = tmp_path/'fresh', []
    def fake_download(url, download_root, md5=None, **k):  # what extracting the archives would leave behind
        asked.append(url)
        make_synthetic_pets(tmp_path/'src', n_trainval=8, n_test=4, size=32)
        import shutil; shutil.copytree(tmp_path/'src'/'oxford-iiit-pet', download_root, dirs_exist_ok=True)
    monkeypatch.setattr(tv_pet, 'download_and_extract_archive', fake_download)
    assert get_pets(root, download=True) == root
    assert [u.rsplit('/', 1)[-1] for u in asked] == ['images.tar.gz', 'annotations.tar.gz']
    assert len(read_split(root, 'test')) == 4

def test_missing_root_without_download_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match='download=True') as e: get_pets(tmp_path/'nowhere')
    assert str(tmp_path/'nowhere') in str(e.value)
