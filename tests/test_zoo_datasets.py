"""Image sets beyond folders (issue 17 point 2): Hugging Face datasets (a
save_to_disk folder, parquet and arrow files) and CSV / JSON-lines
manifests, each built here from the same generated images as a folder and
read, fingerprinted, screened and decoded as that folder is."""
import importlib
import json
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from ped_fast.__main__ import main
from ped_fast.zoo import extract, image_files, image_folder, screen
from ped_fast.zoo.images import image_set, load_rgb, source_kind
from zoo_helpers import small_checkpoint, write_image_folder

datasets = pytest.importorskip("datasets")  # the optional extra `datasets`, in `test`: CI runs these tests
finetune_module = importlib.import_module("ped_fast.zoo.finetune")

NAMES = ("cat", "dog", "owl")


def encoded(file):
    """An Image feature's value holding the file's bytes, as a dataset
    downloaded from the hub holds them."""
    return {"bytes": file.read_bytes(), "path": file.name}


def write_dataset(images, *, image="image", label="label", labels=None):
    """A datasets.Dataset of `images` (a labelled folder's ImageSet): an
    Image column of the files' bytes and a ClassLabel column named NAMES
    (`labels`, else the folder's)."""
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=list(NAMES))})
    return datasets.Dataset.from_dict(
        {image: [encoded(Path(images.root) / path) for path in images.paths],
         label: [int(value) for value in (images.labels if labels is None else labels)]}, features=features)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 12 images as a folder, a save_to_disk folder, a parquet
    file, two arrow shards, a CSV and a JSON-lines manifest; and a
    reference folder with its dataset twin."""
    root = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:  # load_dataset's arrow copies of parquet files stay in the test
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        write_image_folder(root / "data", classes=3, per_class=4, size=32)
        for index, name in enumerate(NAMES):
            os.rename(root / "data" / f"class{index}", root / "data" / name)
        folder = image_folder(root / "data")
        dataset = write_dataset(folder)
        dataset.save_to_disk(root / "saved")
        dataset.to_parquet(root / "data.parquet")
        (root / "shards").mkdir()
        for shard in range(2):
            shutil.copy(next((root / "saved").glob("*.arrow")), root / "shards" / f"part-{shard}.arrow")
        # The manifests list the images in another order than the folder,
        # with paths relative to the manifest and one absolute path.
        order = list(range(len(folder)))[::-1]
        with open(root / "data.csv", "w") as csv:
            csv.write("path,label\n")
            for i in order:
                csv.write(f"data/{folder.paths[i]},{folder.classes[folder.labels[i]]}\n")
        (root / "lists").mkdir()
        with open(root / "lists" / "data.jsonl", "w") as jsonl:
            for i in order:
                path = str(root / "data" / folder.paths[i]) if i == 0 else f"../data/{folder.paths[i]}"
                jsonl.write(json.dumps({"path": path, "label": int(folder.labels[i])}) + "\n")
        write_image_folder(root / "reference", classes=2, per_class=3, size=32, seed=7, labelled=False)
        reference = image_files(root / "reference")
        features = datasets.Features({"image": datasets.Image()})
        datasets.Dataset.from_dict({"image": [encoded(root / "reference" / path) for path in reference.paths]},
                                   features=features).save_to_disk(root / "reference-saved")
        yield {"root": root, "folder": root / "data", "saved": root / "saved", "parquet": root / "data.parquet",
               "arrow": root / "shards" / "part-0.arrow", "shards": root / "shards" / "*.arrow",
               "csv": root / "data.csv", "jsonl": root / "lists" / "data.jsonl",
               "spec": f"m:test_resnet={small_checkpoint(root / 'm', 'test_resnet', 0)}"}


def pixels(images, index):
    return np.asarray(load_rgb(images.file(index)))


def by_image(images):
    """{pixels' bytes: class name} of every image, whatever its order."""
    return {pixels(images, i).tobytes(): images.classes[images.labels[i]] for i in range(len(images))}


@pytest.mark.parametrize("kind", ["saved", "parquet", "arrow", "csv", "jsonl"])
def test_each_kind_lists_the_folders_images_and_classes(sources, kind):
    folder = image_set(sources["folder"])
    images = image_set(sources[kind])
    assert source_kind(sources[kind]) == ("manifest" if kind in ("csv", "jsonl") else "dataset")
    assert images.classes == (("0", "1", "2") if kind == "jsonl" else NAMES)
    if kind in ("saved", "parquet", "arrow"):
        assert images.paths == tuple(f"row {i}" for i in range(12))
        np.testing.assert_array_equal(images.labels, folder.labels)
        for i in range(len(images)):
            np.testing.assert_array_equal(pixels(images, i), pixels(folder, i))
    else:
        relabel = dict(zip(images.classes, NAMES))
        assert {key: relabel[name] for key, name in by_image(images).items()} == by_image(folder)


def test_arrow_shards_are_one_set_in_file_order(sources):
    shards = image_set(sources["shards"])
    assert len(shards) == 24 and shards.classes == NAMES
    np.testing.assert_array_equal(pixels(shards, 12), pixels(image_set(sources["folder"]), 0))


def test_features_equal_the_folders(sources, tmp_path):
    """The same images give the same features from every kind (decoded by
    the same load_rgb from the same bytes); a worker process reopens the
    dataset (workers=1)."""
    # One thread: the thread count (which workers would change) rounds convolutions differently.
    options = dict(cache=tmp_path, batch_size=5, progress=False, pretrained=False, threads=1)
    want = extract(sources["spec"], sources["folder"], **options)["m"]
    keys = {want.key}
    for kind in ("saved", "parquet", "arrow"):
        got = extract(sources["spec"], sources[kind], workers=1 if kind == "saved" else 0, **options)["m"]
        np.testing.assert_array_equal(got.features, want.features)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.classes == NAMES
        keys.add(got.key)
    for kind in ("csv", "jsonl"):
        got = extract(sources["spec"], sources[kind], **options)["m"]
        np.testing.assert_array_equal(got.features, want.features[::-1])
        keys.add(got.key)
    assert len(keys) == 6  # each kind is its own cache entry


def test_screen_with_dataset_data_and_reference(sources, tmp_path):
    common = dict(scorers="sfda,logme", cache=tmp_path, batch_size=6, progress=False, bootstrap=0)
    want = screen(sources["spec"], sources["folder"], sources["root"] / "reference", **common)
    got = screen(sources["spec"], sources["saved"], sources["root"] / "reference-saved", **common)
    assert got["models"][0]["error"] is None
    assert got["models"][0]["cached"] == []  # new sets: nothing reused from the folders' entries
    assert got["models"][0]["scores"] == want["models"][0]["scores"]
    assert got["data"]["classes"] == list(NAMES) and got["data"]["path"] == str(sources["saved"])


def test_fingerprints_follow_the_contents(sources, tmp_path):
    first = {kind: image_set(sources[kind]).fingerprint for kind in ("folder", "saved", "parquet", "arrow", "csv")}
    assert len(set(first.values())) == 5
    assert image_set(sources["saved"]).fingerprint == first["saved"]
    assert image_set(sources["saved"], labelled=False).fingerprint != first["saved"]
    # A dataset saved again with other rows is another set.
    images = image_set(sources["saved"])
    datasets.load_from_disk(sources["saved"]).select(range(6)).save_to_disk(tmp_path / "saved")
    assert image_set(tmp_path / "saved").fingerprint != images.fingerprint
    # A manifest's set changes with its text and with a listed file.
    shutil.copy(sources["csv"], tmp_path / "data.csv")
    os.symlink(sources["folder"], tmp_path / "data")
    copied = image_set(tmp_path / "data.csv").fingerprint
    assert copied == first["csv"]  # the same text listing the same files
    listed = sources["folder"] / "cat" / "0.png"
    stat = listed.stat()
    os.utime(listed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert image_set(tmp_path / "data.csv").fingerprint != copied
    finally:
        os.utime(listed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (tmp_path / "data.csv").write_text((tmp_path / "data.csv").read_text().replace("cat", "kitten"))
    assert image_set(tmp_path / "data.csv").fingerprint != copied


def test_a_dataset_set_pickles_as_its_description(sources, tmp_path):
    """Decoding workers and Ray tasks receive the set: its pickle holds the
    dataset's path and fingerprint, never its images, and is refused where
    the dataset has changed since it was listed."""
    images = image_set(sources["saved"])
    images.file(0)  # the dataset is open in this process
    sent = pickle.dumps(images)
    assert len(sent) < 2000 < sum(len(pixels(images, i).tobytes()) for i in range(len(images)))
    received = pickle.loads(sent)
    np.testing.assert_array_equal(pixels(received, 5), pixels(images, 5))
    np.testing.assert_array_equal(pixels(received.subset(3), 0), pixels(images, int(received.subset(3).paths[0][4:])))
    shutil.copytree(sources["saved"], tmp_path / "saved")
    sent = pickle.dumps(image_set(tmp_path / "saved"))
    shutil.rmtree(tmp_path / "saved")
    datasets.load_from_disk(sources["saved"]).select(range(6)).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match=r"data dataset '.*saved' changed since it was listed"):
        pickle.loads(sent).file(0)


def test_columns_are_named_or_found(sources, tmp_path):
    write_dataset(image_set(sources["folder"]), image="picture", label="kind").save_to_disk(tmp_path / "renamed")
    # The only Image and the only ClassLabel column are found by type.
    found = image_set(tmp_path / "renamed")
    assert found.classes == NAMES and len(found) == 12
    assert image_set(tmp_path / "renamed", image_column="picture", label_column="kind").fingerprint == \
        found.fingerprint
    with pytest.raises(ValueError, match=r"data dataset '.*saved' has no column 'img' \(image_column\); its "
                                         r"columns: image, label"):
        image_set(sources["saved"], image_column="img")
    with pytest.raises(ValueError, match=r"has no column 'kind' \(label_column\); its columns: image, label"):
        image_set(sources["saved"], label_column="kind")
    with pytest.raises(ValueError, match=r"image column 'label' holds ClassLabel.*expected images"):
        image_set(sources["saved"], image_column="label")
    with pytest.raises(ValueError, match=r"manifest '.*data\.csv' has no column 'file' \(image_column\); its "
                                         r"columns: path, label"):
        image_set(sources["csv"], image_column="file")
    with pytest.raises(ValueError, match=r"image_column names a column of a dataset or a manifest; data '.*data' "
                                         r"is an image folder"):
        image_set(sources["folder"], image_column="image")
    datasets.DatasetDict({"train": datasets.load_from_disk(sources["saved"])}).save_to_disk(tmp_path / "dict")
    with pytest.raises(ValueError, match=r"is a DatasetDict with splits train: give one split's folder"):
        image_set(tmp_path / "dict")


def test_without_the_datasets_package(sources, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` finds where it is not installed
    with pytest.raises(ValueError, match=r"data dataset '.*saved': reading a Hugging Face dataset needs the datasets "
                                         r"package \(pip install 'ped_fast\[datasets\]'\)"):
        image_set(sources["saved"])
    assert len(image_set(sources["csv"])) == 12  # manifests and folders do not need it


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data 'nowhere/\*\.parquet' matches no file"):
        image_set("nowhere/*.parquet")
    with pytest.raises(FileNotFoundError, match=r"data '.*none\.arrow' does not exist"):
        image_set(tmp_path / "none.arrow")


def test_unlabelled_rows_are_left_out_and_counted(sources, tmp_path):
    folder = image_set(sources["folder"])
    labels = folder.labels.copy()
    labels[3] = -1  # ClassLabel's "no label"
    write_dataset(folder, labels=labels).save_to_disk(tmp_path / "saved")
    with pytest.warns(RuntimeWarning, match=r"1 of 12 rows of data dataset .* have no label in column 'label' and "
                                            r"were left out: row 3"):
        images = image_set(tmp_path / "saved")
    assert len(images) == 11 and "row 3" not in images.paths
    # The reference does not read labels: every row is an image.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(image_set(tmp_path / "saved", labelled=False)) == 12
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nb.png,\nc.png,y\n")
    with pytest.warns(RuntimeWarning, match=r"1 of 3 rows of data manifest .* were left out: line 3"):
        assert image_set(tmp_path / "m.csv").paths == ("a.png", "c.png")


def test_malformed_manifests_are_errors_naming_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png", "label": 1}\n{"path": "b.png", "label": \n')
    with pytest.raises(ValueError, match=r"manifest '.*bad\.jsonl' line 2 is not JSON"):
        image_set(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('["a.png", 1]\n')
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object"):
        image_set(tmp_path / "list.jsonl")
    (tmp_path / "nopath.csv").write_text("path,label\na.png,x\n,y\n")
    with pytest.raises(ValueError, match=r"manifest '.*nopath\.csv' line 3: no image path in column 'path'"):
        image_set(tmp_path / "nopath.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"manifest '.*empty\.csv' is empty; expected a header line"):
        image_set(tmp_path / "empty.csv")
    (tmp_path / "float.jsonl").write_text('{"path": "a.png", "label": 1.5}\n')
    with pytest.raises(ValueError, match=r"labels must be class names or integers, got 1\.5"):
        image_set(tmp_path / "float.jsonl")
    with pytest.raises(FileNotFoundError, match=r"data manifest '.*none\.csv' does not exist"):
        image_set(tmp_path / "none.csv")


def test_integer_labels_sort_by_value(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,10\nb.png,2\nc.png,2\n")
    images = image_set(tmp_path / "m.csv")
    assert images.classes == ("2", "10") and images.labels.tolist() == [1, 0, 0]


def test_unreadable_rows_and_files_are_skipped_and_counted(sources, tmp_path):
    """A row whose bytes are no image, and a manifest's missing file, are
    skipped with a warning as an undecodable file of a folder is."""
    dataset = datasets.load_from_disk(sources["saved"]).cast_column("image", datasets.Image(decode=False))
    broken = dataset.map(lambda row, i: {"image": {"bytes": b"not an image", "path": "x.png"}} if i == 4 else row,
                         with_indices=True)
    broken.cast_column("image", datasets.Image()).save_to_disk(tmp_path / "broken")
    options = dict(cache=tmp_path / "cache", batch_size=5, progress=False, pretrained=False)
    want = extract(sources["spec"], sources["folder"], **options)["m"]
    with pytest.warns(RuntimeWarning, match=r"1 of 12 images under .*broken could not be decoded and were skipped: "
                                            r"row 4"):
        got = extract(sources["spec"], tmp_path / "broken", **options)["m"]
    np.testing.assert_array_equal(got.features, np.delete(want.features, 4, axis=0))
    text = sources["csv"].read_text().replace("data/owl/3.png", str(tmp_path / "gone.png"))
    (sources["root"] / "gone.csv").write_text(text)
    with pytest.warns(RuntimeWarning, match=r"1 of 12 images under .*gone\.csv could not be decoded.*gone\.png"):
        assert len(extract(sources["spec"], sources["root"] / "gone.csv", **options)["m"].features) == 11


def test_finetune_reads_datasets_and_manifests(sources):
    splits = finetune_module._splits(sources["saved"], sources["csv"])
    assert splits.train.classes == NAMES and len(splits.test) == 12
    assert [splits.train.classes[label] for label in splits.test_labels] == \
        [splits.test.classes[label] for label in splits.test.labels]


def test_cli_column_options(sources, tmp_path, capsys):
    folder = image_set(sources["folder"])
    dataset = write_dataset(folder, image="picture", label="kind")
    dataset.add_column("other", dataset["kind"][:], feature=dataset.features["kind"]).save_to_disk(tmp_path / "two")
    common = ["--models", sources["spec"], "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(["extract", *common, "--data", str(tmp_path / "two"), "--label-column", "kind",
                 "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "labels.npy").tolist() == folder.labels.tolist()
    with pytest.raises(SystemExit) as exit_:
        main(["extract", *common, "--data", str(tmp_path / "two")])  # two ClassLabel columns: which one?
    assert exit_.value.code == 2
    assert "has no column 'label' and several ClassLabel columns: name it with label_column (--label-column); its " \
           "columns: picture, kind, other" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["screen", *common, "--data", str(sources["folder"]), "--reference", "self", "--image-column", "x"])
    assert exit_.value.code == 2
    assert "--image-column names a column of a dataset or a manifest; --data '" in capsys.readouterr().err
