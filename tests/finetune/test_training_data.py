"""Training data for fine-tuning: ImageFolder directories, tars of them and npz files, mixed; bad sources refused in one line;
a fine-tune from a tar resumes to the weights of an uninterrupted one, whatever the number of decoding workers."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from adans_toolchain.errors import DataError
from adans_toolchain.finetune.train import EpochBatches, FinetuneConfig, finetune
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.training_data import SampleRequest, TrainingSet, load_training_set

CLASSES = ("cat", "dog", "frog")  # labels 0, 1, 2
SHAPE = (3, 16, 16)
PREP = Preprocessing()


def write_image_folder(root, *, per_class=4, size=(16, 16), suffix=".jpg", classes=CLASSES, seed=0):
    """root/<class>/NNNN.<suffix>: random images, distinct per class and index."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:04d}{suffix}")
    return root


def write_tar(folder, path, *, top="train", mode="w"):
    """A tar of an ImageFolder under one top folder, as train_jpeg.tar holds it (train/<class>/NNNN.jpg)."""
    with tarfile.open(path, mode) as tar:
        tar.add(folder, arcname=top)
    return path


def write_npz(path, *, n=6, size=16, labels=None, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % len(CLASSES) if labels is None else np.asarray(labels)
    np.savez(path, x=x, y=y)
    return path


def plain(training: TrainingSet) -> torch.Tensor:
    """Every image without augmentation, in index order."""
    return torch.stack([training[SampleRequest(i)][0] for i in range(len(training))])


def test_an_image_folder_is_labelled_by_sorted_class_names_and_prepared_as_val(tmp_path):
    folder = write_image_folder(tmp_path / "pngs", suffix=".png")
    training = load_training_set(str(folder), PREP, SHAPE, classes=3)
    val = load_image_set(folder, PREP)  # how VAL reads the same folder: same pixels, same normalisation, same labels
    assert torch.equal(plain(training), val.x)
    assert training.labels.tolist() == val.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert training.decodes_images


@pytest.mark.parametrize("mode, name", [("w", "train.tar"), ("w:gz", "train.tar.gz")])
def test_a_tar_reads_as_the_folder_it_holds(tmp_path, mode, name):
    folder = write_image_folder(tmp_path / "jpegs")
    from_folder = load_training_set(str(folder), PREP, SHAPE)
    from_tar = load_training_set(str(write_tar(folder, tmp_path / name, mode=mode)), PREP, SHAPE)
    assert torch.equal(plain(from_tar), plain(from_folder))
    assert torch.equal(from_tar.labels, from_folder.labels)


def test_mixed_sources_share_one_label_space(tmp_path):
    npz = write_npz(tmp_path / "exact.npz", n=6)
    tar = write_tar(write_image_folder(tmp_path / "jpegs"), tmp_path / "train.tar")
    training = load_training_set(f"{npz},{tar}", PREP, SHAPE, classes=3)
    assert len(training) == 6 + 12
    assert training.labels.tolist() == [0, 1, 2, 0, 1, 2] + [0] * 4 + [1] * 4 + [2] * 4
    # The npz's images are the ones VAL loading gives; the tar's follow them.
    assert torch.equal(plain(training)[:6], load_image_set(npz, PREP).x)
    assert [kind for kind, _, _ in training.identity()] == ["TensorSource", "TarSource"]


def test_images_of_another_size_are_resized_to_the_model_input(tmp_path):
    folder = write_image_folder(tmp_path / "big", size=(20, 24))
    training = load_training_set(str(folder), PREP, SHAPE)
    assert training[SampleRequest(0)][0].shape == SHAPE


def test_a_shift_is_a_zero_padded_crop_and_a_flip_mirrors(tmp_path):
    training = load_training_set(str(write_npz(tmp_path / "a.npz")), PREP, SHAPE)
    image = training[SampleRequest(0)][0]
    moved = training[SampleRequest(0, 2, -1)][0]  # window 2 rows down, 1 column left
    assert torch.equal(moved[:, :-2, 1:], image[:, 2:, :-1])
    assert (moved[:, -2:] == 0).all() and (moved[:, :, :1] == 0).all()  # zero = the mean pixel
    assert torch.equal(training[SampleRequest(0, flip=True)][0], image.flip(-1))


def test_an_epoch_covers_every_image_once_with_draws_from_seed_and_epoch_only():
    batches = EpochBatches(10, 4, seed=3, image_size=(16, 16), augment=True)

    def epoch(e):
        batches.epoch = e
        return [list(b) for b in batches]

    first = epoch(0)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(r.index for b in first for r in b) == list(range(10))
    assert all(abs(r.dy) <= 2 and abs(r.dx) <= 2 for b in first for r in b)  # pad 16/8 = 2
    assert epoch(0) == first and epoch(1) != first


def test_a_fine_tune_from_a_tar_resumes_to_the_uninterrupted_weights_whatever_the_workers(tmp_path):
    npz = write_npz(tmp_path / "exact.npz", n=6)
    tar = write_tar(write_image_folder(tmp_path / "jpegs", per_class=6), tmp_path / "train.tar")
    training = load_training_set([str(npz), str(tar)], PREP, SHAPE, classes=3)
    config = FinetuneConfig(epochs=2, lr=0.05, batch_size=8, seed=5)

    uninterrupted = tiny_net()
    finetune(uninterrupted, training, config, checkpoint=tmp_path / "a.pt", workers=0)

    class Killed(Exception):
        pass

    def kill_after_first(epoch, loss, top1):
        if epoch == 1:
            raise Killed  # epoch 1's checkpoint is on disk

    with pytest.raises(Killed):
        finetune(tiny_net(), training, config, checkpoint=tmp_path / "b.pt", workers=2, on_epoch=kill_after_first)
    resumed = tiny_net()
    log = finetune(resumed, training, config, checkpoint=tmp_path / "b.pt", workers=1)
    assert log.resumed_from_epoch == 1 and log.epochs_done == 2
    expected = uninterrupted.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_checkpoint_of_other_training_data_is_refused(tmp_path):
    from adans_toolchain.errors import SearchStateError

    one = load_training_set(str(write_npz(tmp_path / "a.npz", n=6)), PREP, SHAPE)
    other = load_training_set(str(write_npz(tmp_path / "b.npz", n=6)), PREP, SHAPE)  # same count, another file
    config = FinetuneConfig(epochs=1, batch_size=4)
    finetune(tiny_net(), one, config, checkpoint=tmp_path / "c.pt")
    with pytest.raises(SearchStateError, match="training data"):
        finetune(tiny_net(), other, FinetuneConfig(epochs=2, batch_size=4), checkpoint=tmp_path / "c.pt")


def test_an_image_that_cannot_be_decoded_stops_the_fine_tune_in_one_line(tmp_path):
    folder = write_image_folder(tmp_path / "jpegs")
    (folder / "dog" / "0002.jpg").write_bytes(b"not a jpeg")
    training = load_training_set(str(write_tar(folder, tmp_path / "train.tar")), PREP, SHAPE)
    with pytest.raises(DataError, match=r"cannot decode training image dog/0002.jpg in .*train.tar") as error:
        finetune(tiny_net(), training, FinetuneConfig(epochs=1, batch_size=4), workers=1)
    assert "\n" not in str(error.value)


def _bad_sources(tmp_path):
    """name -> (--train-data, what the one-line error must say)."""
    folder = write_image_folder(tmp_path / "three")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.tar").write_bytes(b"\0garbage" * 100)
    two = write_image_folder(tmp_path / "two", classes=("cat", "dog"))
    empty_class = write_image_folder(tmp_path / "gap")
    (empty_class / "emu").mkdir()
    return {
        "missing": (str(tmp_path / "nope.tar"), "does not exist"),
        "unknown kind": (str(tmp_path / "notes.txt"), "must be an .npz file"),
        "not a tar": (str(tmp_path / "broken.tar"), "cannot read .* as a tar archive"),
        "no class folders": (str(two / "cat"), "holds 4 images but no class folders"),
        "class folders differ": (f"{folder},{write_tar(two, tmp_path / 'two.tar')}", "disagree on the classes"),
        "npz labels beyond the folders": (f"{write_npz(tmp_path / 'l.npz', labels=[0, 1, 2, 3, 4, 5])},{folder}",
                                          "disagree on the number of classes"),
        "npz of another size": (str(write_npz(tmp_path / 's.npz', size=12)), "are 3x12x12 but the model takes 3x16x16"),
        "empty class folder": (str(empty_class), "class folder .*emu holds no images"),
        "more classes than the model": (str(folder), "the model has 2 outputs"),
        "nothing given": (" , ", "no training data given"),
    }


def test_a_bad_source_is_refused_in_one_line(tmp_path):
    for name, (spec, message) in _bad_sources(tmp_path).items():
        with pytest.raises(DataError, match=message) as error:
            load_training_set(spec, PREP, SHAPE, classes=2 if name == "more classes than the model" else 3)
        assert "\n" not in str(error.value), name


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
