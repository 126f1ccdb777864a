"""Class, split and data-or-not from member paths, for every layout the NEU releases use."""
from __future__ import annotations

import pytest

from vapm.data.ingest.labels import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, UnknownClass, class_from_path,
                                ignore_reason, split_from_path)

NEU = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
AUDIO = ["Bearing", "Flywheel", "Healthy", "LIV", "LOV", "NRV", "Piston", "Riderbelt"]


@pytest.mark.parametrize("member, expected", [
    ("NEU-data-TrainTest/train/Crazing/crazing_1.jpg", "Crazing"),   # the book's layout
    ("NEU-data-TrainTest/test/Rolled/rolled-in_scale_7.jpg", "Rolled"),
    ("Pitted/pitted_surface_3.jpg", "Pitted"),                       # flat folders
    ("data/SCRATCHES/img.png", "Scratches"),                         # folder case does not matter
    ("NEU surface defect database/Cr_1.bmp", "Crazing"),             # NEU-CLS prefixes
    ("In_12.bmp", "Inclusion"),
    ("Pa_3.BMP", "Patches"),
    ("PS_300.bmp", "Pitted"),
    ("RS_9.bmp", "Rolled"),
    ("Sc_1.bmp", "Scratches"),
    ("NEU-DET/IMAGES/crazing_5.jpg", "Crazing"),                      # NEU-DET prefixes
    ("NEU-DET/IMAGES/inclusion_5.jpg", "Inclusion"),
    ("NEU-DET/IMAGES/patches_5.jpg", "Patches"),
    ("NEU-DET/IMAGES/pitted_surface_5.jpg", "Pitted"),
    ("NEU-DET/IMAGES/rolled-in_scale_5.jpg", "Rolled"),
    ("NEU-DET/IMAGES/scratches_5.jpg", "Scratches"),
    ("NEU-DET/train/images/pitted_surface/pitted_surface_1.jpg", "Pitted"),  # NEU-DET folder spelling
])
def test_vision_class_from_every_neu_layout(member, expected):
    assert class_from_path(member, NEU) == expected


def test_audio_class_from_folder_and_the_nearest_folder_wins():
    assert class_from_path("AirCompressor_Data/LIV/preprocess_Reading1.dat", AUDIO) == "LIV"
    assert class_from_path("Healthy/archive/Bearing/x.wav", AUDIO) == "Bearing"


@pytest.mark.parametrize("member", ["train/Rust/a.jpg", "img_001.jpg", "misc/crazingX.jpg"])
def test_unknown_class_is_an_error_naming_the_classes(member):
    with pytest.raises(UnknownClass, match="unknown class.*Crazing"):
        class_from_path(member, NEU)


def test_folder_and_prefix_that_disagree_is_an_error():
    with pytest.raises(UnknownClass, match="Crazing.*'patches_'.*Patches"):
        class_from_path("train/Crazing/patches_4.jpg", NEU)


def test_neu_prefixes_do_not_apply_to_classes_of_other_names():
    with pytest.raises(UnknownClass):
        class_from_path("Cr_1.bmp", ["Cat", "Dog"])


@pytest.mark.parametrize("member, expected", [
    ("NEU-data-TrainTest/train/Crazing/a.jpg", "train"),
    ("x/TEST/Crazing/a.jpg", "test"),
    ("Crazing/a.jpg", None),
    ("Crazing/train_1.jpg", None),  # only folders count, not file names
])
def test_split_from_path(member, expected):
    assert split_from_path(member) == expected


@pytest.mark.parametrize("member, extensions, ignored", [
    ("AirCompressor_Data/license.txt", AUDIO_EXTENSIONS, True),
    ("AirCompressor_Data/README", AUDIO_EXTENSIONS, True),
    ("__MACOSX/Crazing/._a.jpg", IMAGE_EXTENSIONS, True),
    ("Crazing/.DS_Store", IMAGE_EXTENSIONS, True),
    ("Crazing/", IMAGE_EXTENSIONS, True),
    ("NEU-DET/ANNOTATIONS/crazing_1.xml", IMAGE_EXTENSIONS, True),
    ("Crazing/a.JPEG", IMAGE_EXTENSIONS, False),
    ("Crazing/a.bmp", IMAGE_EXTENSIONS, False),
    ("LIV/a.flac", AUDIO_EXTENSIONS, False),
    ("LIV/a.jpg", AUDIO_EXTENSIONS, True),
])
def test_non_data_members_are_ignored(member, extensions, ignored):
    assert (ignore_reason(member, extensions) is not None) == ignored
