"""fastvae.data: the embedded sprites, the file loaders (on small files written here),
binarization, the Python adapters, and load_dataset.

The checks against the real MNIST files run only where ../shared/data (or the folder
FASTVAE_DATA names) holds them."""
import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from fastvae.data import (
    DATASETS,
    DEFAULT_DATASET,
    FACTOR_NAMES,
    FACTOR_SIZES,
    DynamicBinarization,
    SpritesDataset,
    TensorImageDataset,
    data_root,
    from_tensor,
    load_binarized_mnist,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_mnist,
    make_sprites,
    render_sprites,
    static_binarize,
    wrap_dataset,
)
from fastvae.data.sprites import split_of

try:
    from PIL import Image
except ImportError:  # Pillow comes with matplotlib; without it only the image-file tests skip
    Image = None
needs_pil = pytest.mark.skipif(Image is None, reason="Pillow is not installed")


# --------------------------------------------------------------------------------------
# Sprites
# --------------------------------------------------------------------------------------


def test_make_sprites_is_deterministic_given_the_seed():
    images, factors = make_sprites(200, seed=7)
    again_images, again_factors = make_sprites(200, seed=7)
    other_images, other_factors = make_sprites(200, seed=8)
    assert images.numpy().tobytes() == again_images.numpy().tobytes()
    assert torch.equal(factors, again_factors)
    assert not torch.equal(factors, other_factors)
    assert not torch.equal(images, other_images)


def test_make_sprites_shapes_dtypes_values_and_factor_ranges():
    images, factors = make_sprites(500, seed=0)
    assert images.shape == (500, 1, 64, 64) and images.dtype == torch.uint8
    assert factors.shape == (500, 5) and factors.dtype == torch.int64
    assert set(images.unique().tolist()) == {0, 1}
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert (factors >= 0).all()
    assert (factors < torch.tensor(FACTOR_SIZES)).all()
    # Drawn uniformly: every shape occurs, and positions span the whole range.
    assert set(factors[:, 0].tolist()) == {0, 1, 2}
    assert factors[:, 3].min() <= 2 and factors[:, 3].max() >= 29
    # Every image shows a shape, never cut by the border.
    assert (images.sum(dim=(1, 2, 3)) > 0).all()
    border = images[..., 0, :].sum() + images[..., -1, :].sum() + images[..., :, 0].sum() + images[..., :, -1].sum()
    assert border == 0


def test_make_sprites_renders_its_factors():
    images, factors = make_sprites(64, seed=3)
    assert torch.equal(render_sprites(factors), images)


def test_sprite_splits_are_disjoint_draws():
    def combinations(factors):
        return set(map(tuple, factors.tolist()))

    _, train = make_sprites(600, seed=0, split="train")
    _, test = make_sprites(600, seed=0, split="test")
    _, valid = make_sprites(600, seed=0, split="valid")
    assert not combinations(train) & combinations(test)
    assert not combinations(train) & combinations(valid)
    assert not combinations(valid) & combinations(test)
    assert set(split_of(train)) == {"train"} and set(split_of(test)) == {"test"}
    assert set(split_of(valid)) == {"valid"}
    generator = torch.Generator().manual_seed(0)
    uniform = torch.stack([torch.randint(0, size, (5000,), generator=generator) for size in FACTOR_SIZES], 1)
    splits = split_of(uniform)
    fractions = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(fractions["test"] - 0.1) < 0.02 and abs(fractions["valid"] - 0.1) < 0.02


def _centroid(image):
    rows, columns = image[0].nonzero(as_tuple=True)
    return rows.double().mean().item(), columns.double().mean().item()


def test_sprite_position_factors_move_the_shape():
    base = torch.tensor([0, 3, 0, 16, 16])
    along_x = base.repeat(32, 1)
    along_x[:, 3] = torch.arange(32)
    along_y = base.repeat(32, 1)
    along_y[:, 4] = torch.arange(32)
    x_centroids = [_centroid(image)[1] for image in render_sprites(along_x)]
    y_centroids = [_centroid(image)[0] for image in render_sprites(along_y)]
    assert all(b > a for a, b in zip(x_centroids, x_centroids[1:]))
    assert all(b > a for a, b in zip(y_centroids, y_centroids[1:]))  # pos_y grows downwards
    assert 25 < x_centroids[-1] - x_centroids[0] < 40
    # Moving in x leaves the row centroid alone, and the reverse.
    rows_along_x = [_centroid(image)[0] for image in render_sprites(along_x)]
    assert max(rows_along_x) - min(rows_along_x) < 1.0


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_sprite_scale_grows_the_ink_area(shape):
    factors = torch.tensor([[shape, scale, 7, 16, 16] for scale in range(6)])
    areas = render_sprites(factors).sum(dim=(1, 2, 3)).tolist()
    assert all(b > a for a, b in zip(areas, areas[1:]))
    # Area grows as scale squared (scales 0.5 ... 1.0): about 4x from smallest to largest.
    assert 3.0 < areas[-1] / areas[0] < 5.0


def test_sprite_shapes_differ_and_orientation_turns_them():
    images = render_sprites(torch.tensor([[shape, 5, 0, 16, 16] for shape in range(3)]))
    areas = images.sum(dim=(1, 2, 3)).double()
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    assert not torch.equal(images[0], images[2])
    # square (2r)^2 = 4r^2 > heart (about 2.5 r^2) > ellipse (pi / 2 r^2)
    assert areas[0] > areas[2] > areas[1]

    def extent(image):
        rows, columns = image[0].nonzero(as_tuple=True)
        return (rows.max() - rows.min()).item(), (columns.max() - columns.min()).item()

    upright, turned = render_sprites(torch.tensor([[1, 5, 0, 16, 16], [1, 5, 10, 16, 16]]))
    height, width = extent(upright)
    assert height > 1.6 * width  # the ellipse stands at orientation 0 ...
    height, width = extent(turned)
    assert width > 1.6 * height  # ... and lies after a quarter turn (10 of 40 steps)
    # Counterclockwise: an eighth of a turn leans its top to the left.
    leaning = render_sprites(torch.tensor([[1, 5, 5, 16, 16]]))[0, 0]
    rows, columns = leaning.nonzero(as_tuple=True)
    assert columns[rows == rows.min()].double().mean() < columns[rows == rows.max()].double().mean() - 5


def test_render_sprites_rejects_bad_factors():
    with pytest.raises(ValueError, match="render_sprites.*'orientation'"):
        render_sprites(torch.tensor([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match="render_sprites.*shape"):
        render_sprites(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="render_sprites"):
        render_sprites(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="make_sprites.*split"):
        make_sprites(3, split="holdout")
    with pytest.raises(ValueError, match="make_sprites.*num_images"):
        make_sprites(-1)


def test_sprites_dataset():
    dataset = SpritesDataset(num_images=100, seed=1, split="test")
    assert len(dataset) == 100 and dataset.data_shape == (1, 64, 64)
    assert dataset.factors.shape == (100, 5) and dataset.FACTOR_NAMES == FACTOR_NAMES
    item = dataset[5]
    assert item.dtype == torch.float32 and item.shape == (1, 64, 64)
    assert set(item.unique().tolist()) <= {0.0, 1.0}
    indices = torch.tensor([5, 0, 99, 5])
    batch = dataset.batch(indices)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack([dataset[int(i)] for i in indices]))
    images, factors = make_sprites(100, seed=1, split="test")
    assert torch.equal(dataset.images, images) and torch.equal(dataset.factors, factors)


# --------------------------------------------------------------------------------------
# TensorImageDataset, from_tensor, wrap_dataset
# --------------------------------------------------------------------------------------


def test_tensor_image_dataset_reads_uint8_as_float_in_0_1():
    stored = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    dataset = TensorImageDataset(stored, labels=torch.tensor([3, 1, 4, 1]))
    assert dataset.data_shape == (1, 8, 8) and len(dataset) == 4
    assert torch.equal(dataset.batch([2, 0]), torch.stack([stored[2], stored[0]]).float() / 255)
    assert torch.equal(dataset.batch(np.array([3])), dataset[3].unsqueeze(0))
    assert dataset[3].max().item() == 1.0 and dataset[0].min().item() == 0.0
    subset = dataset.subset(torch.tensor([1, 3]))
    assert len(subset) == 2 and subset.labels.tolist() == [1, 1]
    assert torch.equal(subset[1], dataset[3])
    assert torch.equal(dataset.to("cpu").batch([1]), dataset.batch([1]))
    loaded = next(iter(DataLoader(dataset, batch_size=4)))
    assert torch.equal(loaded, dataset.batch(torch.arange(4)))


def test_tensor_image_dataset_float_items_are_copies():
    dataset = TensorImageDataset(torch.full((2, 3), 0.5))
    dataset[0].fill_(0.0)
    assert dataset[0].tolist() == [0.5, 0.5, 0.5]


def test_tensor_image_dataset_errors():
    dataset = TensorImageDataset(torch.zeros(4, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="batch: indices must be integers"):
        dataset.batch(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="batch: indices must be 1-D"):
        dataset.batch(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"TensorImageDataset: floating images must lie in \[0, 1\]"):
        TensorImageDataset(torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        TensorImageDataset(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="max_value=1"):
        TensorImageDataset(torch.full((2, 3), 2, dtype=torch.uint8), max_value=1)
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(torch.zeros(4, 3), labels=torch.zeros(3, dtype=torch.int64))


def test_from_tensor():
    grayscale = torch.randint(0, 256, (5, 6, 7), dtype=torch.uint8)
    dataset = from_tensor(grayscale)
    assert dataset.data_shape == (1, 6, 7)
    assert torch.equal(dataset.batch([4]), grayscale[4:5, None].float() / 255)
    flat = from_tensor(np.random.default_rng(0).random((10, 784)))  # numpy float64 in [0, 1)
    assert flat.data_shape == (784,) and flat.batch([0]).dtype == torch.float32
    binary = from_tensor(torch.tensor([[True, False]]))
    assert binary[0].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="from_tensor: images of shape .* look channels-last"):
        from_tensor(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="from_tensor: images must be uint8"):
        from_tensor(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"from_tensor: floating images must lie in \[0, 1\]"):
        from_tensor(torch.full((2, 3), -0.5))
    with pytest.raises(TypeError, match="from_tensor: images must be a torch.Tensor or numpy array"):
        from_tensor([[0.0, 1.0]])


class _PairDataset(Dataset):
    """Items (x, y) made on the fly, like a torchvision data set."""

    def __init__(self, make_item, count=6):
        self.make_item = make_item
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if index >= self.count:
            raise IndexError(index)
        return self.make_item(index)


def test_wrap_dataset_tensor_dataset_and_fastvae_datasets():
    images = torch.rand(6, 1, 4, 4)
    labels = torch.arange(6)
    wrapped = wrap_dataset(TensorDataset(images, labels))
    assert torch.equal(wrapped.batch(torch.arange(6)), images) and torch.equal(wrapped.labels, labels)
    fastvae_dataset = from_tensor(images)
    assert wrap_dataset(fastvae_dataset) is fastvae_dataset
    subset = wrap_dataset(Subset(fastvae_dataset, [4, 1]))
    assert torch.equal(subset.batch([0, 1]), images[[4, 1]])


@needs_pil
def test_wrap_dataset_reads_any_dataset_once():
    pixels = torch.randint(0, 256, (6, 5, 5), dtype=torch.uint8)
    wrapped = wrap_dataset(_PairDataset(lambda i: (pixels[i], i % 3)))
    assert wrapped.data_shape == (1, 5, 5)
    assert torch.equal(wrapped.batch(torch.arange(6)), pixels[:, None].float() / 255)
    assert wrapped.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # Items without targets, and Pillow RGB images (as torchvision's data sets give them).
    rgb = np.random.default_rng(1).integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    from_pil = wrap_dataset(_PairDataset(lambda i: Image.fromarray(rgb[i])))
    assert from_pil.data_shape == (3, 4, 5) and from_pil.labels is None
    assert torch.equal(from_pil.images, torch.from_numpy(rgb).permute(0, 3, 1, 2))


def test_wrap_dataset_errors():
    ragged = _PairDataset(lambda i: torch.zeros(3 + (i == 2)))
    with pytest.raises(ValueError, match="wrap_dataset: item 2 has shape"):
        wrap_dataset(ragged)
    with pytest.raises(TypeError, match="wrap_dataset: item 0 is a str"):
        wrap_dataset(_PairDataset(lambda i: "text"))
    with pytest.raises(ValueError, match=r"wrap_dataset: floating images must lie in \[0, 1\]"):
        wrap_dataset(_PairDataset(lambda i: torch.full((2,), 3.0)))
    with pytest.raises(ValueError, match="wrap_dataset: dataset is empty"):
        wrap_dataset(_PairDataset(lambda i: torch.zeros(2), count=0))
    with pytest.raises(TypeError, match="wrap_dataset: images must be uint8"):
        wrap_dataset(TensorDataset(torch.zeros(3, 2, dtype=torch.int32)))
    with pytest.raises(TypeError, match="wrap_dataset: dataset must be a map-style Dataset"):
        wrap_dataset(object())


# --------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files
# --------------------------------------------------------------------------------------


def _idx_bytes(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write(path, data, compress):
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _write_mnist(folder, count=7, seed=0, compress=True, splits=("train", "t10k")):
    rng = np.random.default_rng(seed)
    written = {}
    for prefix in splits:
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(images, 2051), compress)
        _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, 2049), compress)
        written[prefix] = (images, labels)
    return written


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_load_mnist_round_trip(tmp_path, compress):
    written = _write_mnist(tmp_path / "mnist", compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        dataset = load_mnist(tmp_path, split=split)
        images, labels = written[prefix]
        assert dataset.data_shape == (1, 28, 28) and len(dataset) == 7
        assert torch.equal(dataset.images, torch.from_numpy(images)[:, None])
        assert dataset.labels.tolist() == labels.tolist()
        assert torch.equal(dataset.batch([0]), torch.from_numpy(images[:1, None]).float() / 255)


def test_load_mnist_layouts(tmp_path):
    # Fashion-MNIST in its own subfolder, MNIST in torchvision's layout, side by side.
    fashion = _write_mnist(tmp_path / "fashion-mnist", seed=1)
    mnist = _write_mnist(tmp_path / "MNIST" / "raw", seed=2, compress=False)
    assert torch.equal(load_mnist(tmp_path, kind="fashion").images[:, 0], torch.from_numpy(fashion["train"][0]))
    assert torch.equal(load_mnist(tmp_path, kind="mnist").images[:, 0], torch.from_numpy(mnist["train"][0]))
    assert load_dataset("fashion-mnist", root=tmp_path, split="test").name == "fashion_mnist (test)"


def test_load_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_mnist(tmp_path / "nowhere")
    message = str(error.value)
    assert "load_mnist" in message and "train-images-idx3-ubyte" in message
    assert str(tmp_path / "nowhere" / "mnist") in message and "t10k-labels-idx1-ubyte" in message
    _write_mnist(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, split="test")


def test_load_mnist_malformed_files(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    labels = np.zeros(4, dtype=np.uint8)
    image_file = tmp_path / "train-images-idx3-ubyte"
    label_file = tmp_path / "train-labels-idx1-ubyte"
    label_file.write_bytes(_idx_bytes(labels, 2049))

    image_file.write_bytes(_idx_bytes(images, 2049))  # a label file's magic number
    with pytest.raises(ValueError, match="load_mnist: .*train-images-idx3-ubyte is not an IDX image file: magic"):
        load_mnist(tmp_path)
    image_file.write_bytes(_idx_bytes(images, 2051)[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is truncated"):
        load_mnist(tmp_path)
    image_file.write_bytes(_idx_bytes(images, 2051) + b"\x00")
    with pytest.raises(ValueError, match="longer than its header says"):
        load_mnist(tmp_path)
    image_file.write_bytes(_idx_bytes(images[:3], 2051))
    with pytest.raises(ValueError, match="holds 3 images but .* holds 4 labels"):
        load_mnist(tmp_path)
    image_file.unlink()
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(images, 2051))[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="load_mnist: split"):
        load_mnist(tmp_path, split="valid")


# --------------------------------------------------------------------------------------
# Binarized MNIST .amat files
# --------------------------------------------------------------------------------------


def _amat_text(images):
    return "".join(" ".join(str(v) for v in row) + "\n" for row in images).encode()


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_load_binarized_mnist_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "valid", "test"):
        written[split] = rng.integers(0, 2, (5, 784), dtype=np.uint8)
        _write(tmp_path / "mnist" / f"binarized_mnist_{split}.amat", _amat_text(written[split]), compress)
    for split, images in written.items():
        dataset = load_binarized_mnist(tmp_path, split=split)
        assert dataset.data_shape == (1, 28, 28) and len(dataset) == 5 and dataset.labels is None
        assert torch.equal(dataset.batch(torch.arange(5)), torch.from_numpy(images).float().reshape(5, 1, 28, 28))


def test_load_binarized_mnist_general_whitespace(tmp_path):
    images = np.random.default_rng(1).integers(0, 2, (3, 784), dtype=np.uint8)
    text = "".join("  ".join(str(v) for v in row) + " \r\n" for row in images)  # no trailing newline issue
    (tmp_path / "binarized_mnist_test.amat").write_text(text.rstrip("\n"))
    dataset = load_binarized_mnist(tmp_path, split="test")
    assert torch.equal(dataset.images.reshape(3, 784), torch.from_numpy(images))


def test_load_binarized_mnist_malformed_files(tmp_path):
    path = tmp_path / "binarized_mnist_train.amat"
    good = np.zeros((2, 784), dtype=np.uint8)
    path.write_bytes(_amat_text(good)[:-10])
    with pytest.raises(ValueError, match=r"load_binarized_mnist: .*binarized_mnist_train.amat, image 2: 779 values"):
        load_binarized_mnist(tmp_path)
    path.write_bytes(_amat_text(good).replace(b"0", b"2", 1))
    with pytest.raises(ValueError, match="image 1: value '2' is not 0 or 1"):
        load_binarized_mnist(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="holds no images"):
        load_binarized_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="binarized_mnist_valid.amat.*looked in"):
        load_binarized_mnist(tmp_path, split="valid")


# --------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------


def _write_cifar(folder, count=4, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, count)]
        with open(folder / name, "wb") as file:
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, file, protocol=2)
        written[name] = (data, labels)
    return written


def test_load_cifar10_round_trip(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train = load_cifar10(root, split="train")
        assert len(train) == 20 and train.data_shape == (3, 32, 32)
        data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
        assert torch.equal(train.images.reshape(20, 3072), torch.from_numpy(data))
        # Each row is the red plane, then green, then blue.
        assert torch.equal(train.images[0, 1], torch.from_numpy(data[0, 1024:2048]).reshape(32, 32))
        assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
        test = load_cifar10(root, split="test")
        assert len(test) == 4 and test.labels.tolist() == written["test_batch"][1]


class _RunsCode:
    def __reduce__(self):
        return (os.remove, ("/nonexistent/fastvae-test",))


def test_load_cifar10_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="load_cifar10: could not find data_batch_3"):
        load_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as file:
        pickle.dump({b"data": _RunsCode(), b"labels": []}, file, protocol=2)
    with pytest.raises(ValueError, match="not a readable CIFAR-10 batch .*refusing to load the global posix.remove"):
        load_cifar10(tmp_path, split="test")
    with open(folder / "test_batch", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, file, protocol=2)
    with pytest.raises(ValueError, match=r"'data' must be uint8 \[N, 3072\]"):
        load_cifar10(tmp_path, split="test")
    with open(folder / "test_batch", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, file, protocol=2)
    with pytest.raises(ValueError, match="holds 2 images but 1 labels"):
        load_cifar10(tmp_path, split="test")
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR-10 batch"):
        load_cifar10(tmp_path, split="test")


# --------------------------------------------------------------------------------------
# A folder of images
# --------------------------------------------------------------------------------------


@needs_pil
def test_load_image_folder_round_trip_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    for index, array in enumerate(pixels):
        folder = tmp_path / ("cats" if index < 2 else "dogs")
        folder.mkdir(exist_ok=True)
        Image.fromarray(array).save(folder / f"{index}.png")
    dataset = load_image_folder(tmp_path)
    assert dataset.data_shape == (3, 6, 5)
    assert torch.equal(dataset.images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert dataset.classes == ["cats", "dogs"] and dataset.labels.tolist() == [0, 0, 1, 1]
    gray = load_image_folder(tmp_path, channels=1)
    assert gray.data_shape == (1, 6, 5)
    small = load_image_folder(tmp_path, image_size=(3, 4))
    assert small.data_shape == (3, 3, 4)


@needs_pil
def test_load_image_folder_grayscale_and_sizes(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    for index, array in enumerate(pixels):
        Image.fromarray(array).save(tmp_path / f"{index}.png")
    dataset = load_image_folder(tmp_path)
    assert dataset.data_shape == (1, 8, 8) and dataset.labels is None
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(pixels))
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="load_image_folder: images differ in size: .*pass image_size"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, image_size=16).data_shape == (1, 16, 16)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read the image .*broken.png"):
        load_image_folder(tmp_path, image_size=16)


def test_load_image_folder_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="load_image_folder: the image folder .* does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no image files in"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="load_image_folder: channels"):
        load_image_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="load_image_folder: image_size"):
        load_image_folder(tmp_path, image_size=0)
    (tmp_path / "a.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(ImportError, match="load_image_folder: reading image files needs Pillow"):
        load_image_folder(tmp_path)


@needs_pil
def test_load_dataset_image_folder_splits(tmp_path):
    for split, value in (("train", 10), ("test", 200)):
        (tmp_path / split).mkdir()
        Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / split / "a.png")
    test = load_dataset("image_folder", root=tmp_path, split="test")
    assert test.images.flatten()[0] == 200
    assert load_dataset("image_folder", root=tmp_path / "train", split="train").images.flatten()[0] == 10
    with pytest.raises(FileNotFoundError, match="no folder .*valid"):
        load_dataset("image_folder", root=tmp_path, split="valid")
    with pytest.raises(ValueError, match="'image_folder' needs root="):
        load_dataset("image_folder")


# --------------------------------------------------------------------------------------
# Binarization
# --------------------------------------------------------------------------------------


def test_dynamic_binarization_is_deterministic_given_the_generator():
    source = from_tensor(torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    binary = DynamicBinarization(source)
    indices = torch.arange(50)
    first = binary.batch(indices, generator=torch.Generator().manual_seed(1))
    again = binary.batch(indices, generator=torch.Generator().manual_seed(1))
    other = binary.batch(indices, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert set(first.unique().tolist()) == {0.0, 1.0} and first.dtype == torch.float32
    # A fresh draw each time from one generator.
    generator = torch.Generator().manual_seed(1)
    assert not torch.equal(binary.batch(indices, generator=generator), binary.batch(indices, generator=generator))
    assert binary.data_shape == (1, 8, 8) and len(binary) == 50
    assert set(binary[0].unique().tolist()) <= {0.0, 1.0}
    assert len(binary.subset([1, 2])) == 2


def test_dynamic_binarization_mean_is_the_probability():
    probabilities = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    source = from_tensor(probabilities.repeat(20000, 1))
    draws = DynamicBinarization(source).batch(torch.arange(20000), generator=torch.Generator().manual_seed(0))
    # 20000 draws: the standard error of each mean is at most 0.0036.
    torch.testing.assert_close(draws.mean(0), probabilities, atol=0.015, rtol=0)
    assert draws[:, 0].max() == 0 and draws[:, 4].min() == 1


def test_static_binarize():
    labels = torch.arange(400) % 10
    source = from_tensor(torch.full((400, 50), 0.3), labels=labels)
    binary = static_binarize(source, seed=5, chunk_size=64)
    assert torch.equal(binary.images, static_binarize(source, seed=5).images)
    assert not torch.equal(binary.images, static_binarize(source, seed=6).images)
    assert binary.images.dtype == torch.uint8 and set(binary.images.unique().tolist()) == {0, 1}
    assert abs(binary.batch(torch.arange(400)).mean().item() - 0.3) < 0.01
    assert torch.equal(binary.labels, labels)
    with pytest.raises(TypeError, match="DynamicBinarization: dataset must be a fastvae data set"):
        DynamicBinarization(torch.zeros(3))


# --------------------------------------------------------------------------------------
# load_dataset and the data root
# --------------------------------------------------------------------------------------


def test_load_dataset_names_and_arguments():
    assert DEFAULT_DATASET == "sprites" and DEFAULT_DATASET in DATASETS
    with pytest.raises(ValueError, match="unknown data set 'svhn'; known: sprites, mnist, fashion_mnist"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="binarize must be None, 'static' or 'dynamic'"):
        load_dataset("sprites", binarize="threshold")
    with pytest.raises(TypeError, match="'mnist' takes no argument num_images"):
        load_dataset("mnist", num_images=10)
    sprites = load_dataset(num_images=20, seed=4, split="valid")
    assert isinstance(sprites, SpritesDataset) and len(sprites) == 20 and sprites.split == "valid"
    dynamic = load_dataset("sprites", num_images=20, binarize="dynamic")
    assert isinstance(dynamic, DynamicBinarization) and dynamic.factors.shape == (20, 5)


def test_data_root_and_load_dataset_without_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVAE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    written = _write_mnist(tmp_path / "mnist", count=3)
    dataset = load_dataset("mnist", split="test", binarize="static", binarize_seed=1)
    assert dataset.images.dtype == torch.uint8 and len(dataset) == 3
    assert dataset.labels.tolist() == written["t10k"][1].tolist()
    with pytest.raises(FileNotFoundError, match=f"looked in: {tmp_path}"):
        load_dataset("binarized_mnist")
    monkeypatch.delenv("FASTVAE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "fastvae"


# --------------------------------------------------------------------------------------
# The real files, where present
# --------------------------------------------------------------------------------------


def _shared_data():
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data"]
    if os.environ.get("FASTVAE_DATA"):
        candidates.append(Path(os.environ["FASTVAE_DATA"]))
    for folder in candidates:
        if (folder / "mnist" / "binarized_mnist_test.amat.gz").is_file():
            return folder
    return None


SHARED_DATA = _shared_data()
needs_shared_data = pytest.mark.skipif(SHARED_DATA is None, reason="../shared/data (MNIST files) not present")


@needs_shared_data
def test_real_mnist_files():
    for split, count in (("train", 60000), ("test", 10000)):
        for kind in ("mnist", "fashion"):
            dataset = load_mnist(SHARED_DATA, split=split, kind=kind)
            assert len(dataset) == count and dataset.data_shape == (1, 28, 28)
            assert dataset.labels.min() == 0 and dataset.labels.max() == 9
    assert torch.bincount(load_mnist(SHARED_DATA, split="test").labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]


@needs_shared_data
def test_real_binarized_mnist_files():
    for split, count, mean in (("train", 50000, 0.1306), ("valid", 10000, 0.1311), ("test", 10000, 0.1325)):
        dataset = load_binarized_mnist(SHARED_DATA, split=split)
        assert len(dataset) == count
        assert dataset.images.min() == 0 and dataset.images.max() == 1 and dataset.max_value == 1
        assert abs(dataset.batch(torch.arange(count)).mean().item() - mean) < 5e-5
