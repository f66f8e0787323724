"""What several test files share: where the repository and the real data are, the markers that skip a test when the
real data or the ONNX extra is absent (with the reason), and small readers of a `FolderData`.

pytest imports this file before the tests; test files import its names with `from conftest import ...` (pytest puts
`tests/` on `sys.path`)."""
import os
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent   # the checkout: nbs/, unet_tutorial/, tests/
# the real Oxford-IIIT Pet: $UNET_TUTORIAL_DATA, else ../shared/data/pets128 beside the checkout (a newcomer has neither)
PETS = Path(os.environ.get('UNET_TUTORIAL_DATA') or REPO.parent/'shared'/'data'/'pets128')
HAVE_PETS = (PETS/'oxford-iiit-pet'/'annotations'/'test.txt').exists() and \
            (PETS/'oxford-iiit-pet'/'annotations'/'trainval.txt').exists()
needs_pets = pytest.mark.skipif(not HAVE_PETS, reason=f'the real Oxford-IIIT Pet is not at {PETS/"oxford-iiit-pet"} '
                                '(set UNET_TUTORIAL_DATA to a folder holding oxford-iiit-pet/)')

ONNX_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')   # as `unet_tutorial.export.ONNX_PACKAGES` (checked there)
HAVE_ONNX = all(find_spec(m) for m in ONNX_PACKAGES)
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason='the onnx extra (pip install unet_tutorial[onnx]) is not installed')


def masks_by_name(data):
    "{name: (S, S) mask as `read_folder` read it} of a `FolderData`, whatever the split."
    return {n: data.masks[s][i, 0].numpy() for s, ns in data.names.items() for i, n in enumerate(ns)}


def images_by_name(data):
    "{name: (3, S, S) uint8 image} of a `FolderData`, whatever the split."
    return {n: data.images[s][i].numpy() for s, ns in data.names.items() for i, n in enumerate(ns)}


def test_conftest_agrees_with_the_package():
    "The ONNX packages named here are the export module's (so `needs_onnx` skips exactly when the export cannot run)."
    from unet_tutorial.export import ONNX_PACKAGES as theirs
    assert ONNX_PACKAGES == theirs
