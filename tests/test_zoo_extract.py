"""Feature extraction (ped_fast.zoo.extract): one decode per image and data
config, logits from the same pass, workers and precision."""
import dataclasses
import importlib
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from ped_fast.zoo import extract, image_folder
from ped_fast.zoo.models import load_model, save_model_dir
from zoo_helpers import SMALL_CONFIG, small_checkpoint, timm_features, write_image_folder

extract_module = importlib.import_module("ped_fast.zoo.extract")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    write_image_folder(root / "data", classes=3, per_class=5, size=32)
    torch.manual_seed(4)
    save_model_dir(timm.create_model("test_convnext", num_classes=0), root / "headless",
                   architecture="test_convnext", pretrained_cfg=SMALL_CONFIG)
    return {"data": root / "data",
            "a": f"a:test_resnet={small_checkpoint(root / 'a', 'test_resnet', 1)}",
            "b": f"b:test_convnext={small_checkpoint(root / 'b', 'test_convnext', 2)}",
            "headless": f"headless:test_convnext={root / 'headless'}"}


def counting_decodes(monkeypatch):
    files = []
    original = extract_module.load_rgb

    def load(path):
        files.append(path)
        return original(path)

    monkeypatch.setattr(extract_module, "load_rgb", load)
    return files


def test_one_decode_per_image_and_data_config(zoo, tmp_path, monkeypatch):
    files = counting_decodes(monkeypatch)
    shared = extract([zoo["a"], zoo["b"]], zoo["data"], cache=tmp_path / "shared", batch_size=4, progress=False)
    assert len(files) == 15 and len(set(files)) == 15
    files.clear()
    monkeypatch.setattr(extract_module, "_DECODED_BYTES", 0)  # nothing kept across passes: each decodes again
    apart = extract([zoo["a"], zoo["b"]], zoo["data"], cache=tmp_path / "apart", batch_size=4, models_per_pass=1,
                    progress=False)
    assert len(files) == 30
    for label in ("a", "b"):
        np.testing.assert_array_equal(shared[label].features, apart[label].features)
    # A model with another data config (timm's own, 160x160 bicubic) needs its own pass.
    files.clear()
    extract([zoo["a"], "c:test_convnext"], zoo["data"], cache=tmp_path / "mixed", pretrained=False, batch_size=8,
            progress=False)
    assert len(files) == 30


def test_logits_come_from_the_same_pass(zoo, tmp_path):
    result = extract([zoo["a"], zoo["headless"]], zoo["data"], cache=tmp_path, batch_size=8, progress=False,
                     predictions="exact")
    images = image_folder(zoo["data"])
    files = [images.file(i) for i in range(len(images))]
    model = load_model(zoo["a"]).model
    np.testing.assert_array_equal(result["a"].features, timm_features(model, files, SMALL_CONFIG))
    transform = timm.data.create_transform(**SMALL_CONFIG)
    from PIL import Image

    with torch.inference_mode():
        logits = model(torch.stack([transform(Image.open(f).convert("RGB")) for f in files])).numpy()
    # The head applied inside the pass vs model() in one batch of 15 images
    # instead of batches of 8: float32 kernel choice only (~1e-6 relative).
    kept = result["a"].predictions.arrays["logits"]
    np.testing.assert_allclose(kept, logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    assert kept.shape == (15, 1000)
    assert result["headless"].predictions is None and result["headless"].features.shape == (15, 64)


def test_workers_and_precision(zoo, tmp_path):
    # One torch thread for both: by default the forward passes get the cores
    # the decoding workers leave, and another thread count may round a
    # convolution's sums differently (last bits; not part of the key).
    plain = extract(zoo["a"], zoo["data"], cache=tmp_path / "0", batch_size=4, threads=1, progress=False)["a"]
    workers = extract(zoo["a"], zoo["data"], cache=tmp_path / "1", batch_size=4, workers=2, threads=1,
                      progress=False)["a"]
    np.testing.assert_array_equal(workers.features, plain.features)
    assert workers.key == plain.key
    half = extract(zoo["a"], zoo["data"], cache=tmp_path / "0", batch_size=4, precision="bf16", progress=False)["a"]
    assert half.key != plain.key and not half.cached
    assert half.features.dtype == np.float32
    # bfloat16 keeps 8 significant bits (relative rounding 2^-8 ~ 4e-3 per
    # operation) through a dozen layers: a few percent of the largest value.
    scale = np.abs(plain.features).max()
    assert 0 < np.abs(half.features - plain.features).max() <= 5e-2 * scale


@pytest.mark.parametrize("name, value, message", [
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("workers", -1, "workers must be an integer >= 0, got -1"),
    ("precision", "fp8", "precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("device", "mps", "device must be 'cpu' or a CUDA device, got 'mps'"),
    ("device", "gpu0", "device must be a torch device"),
])
def test_bad_settings(zoo, tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        extract(zoo["a"], zoo["data"], cache=tmp_path, progress=False, **{name: value})


def test_a_remembered_config_the_model_disagrees_with_is_not_used(zoo, tmp_path):
    """The config remembered for a model lets a re-run skip building it;
    once the model is built anyway, its own config decides, and the
    remembered entry is left as it is (an entry is never rewritten; the key
    holds the library versions, so a timm upgrade remembers anew)."""
    from ped_fast.zoo import Cache, parse_spec, weights_identity

    cache = Cache(tmp_path / "c")
    spec = parse_spec(zoo["a"])
    identity = weights_identity(spec)
    stale = extract_module.canonical_config(dict(SMALL_CONFIG, input_size=(3, 16, 16), crop_pct=0.5))
    cache.put("config", extract_module.data_config_key(spec, identity),
              {"model": spec.name, "identity": identity, "data_config": stale})
    got = extract(zoo["a"], zoo["data"], cache=cache, progress=False)["a"]
    own = extract_module.canonical_config(load_model(spec).data_config)
    assert own != stale
    assert extract_module.remembered_config(cache, spec, identity) == stale
    data = image_folder(zoo["data"])
    want = timm_features(load_model(spec).model, [data.file(i) for i in range(len(data))], own)
    np.testing.assert_array_equal(got.features, want)


def test_a_failed_stage_keeps_no_traceback():
    """A stored exception's traceback holds the frames of the failed forward
    pass and so its activations: they must be freed while other models run."""
    try:
        raise RuntimeError("out of memory")
    except RuntimeError as caught:
        error = caught
    outcome = extract_module.Outcome(spec=None)
    stage = extract_module.FeaturesStage(None)
    outcome.fail([stage], error)
    assert outcome.results[stage] is error and error.__traceback__ is None


def test_two_feature_stages_of_one_run_keep_their_own_results(zoo, tmp_path):
    """Screening several target tasks pushes each model through one
    features stage per task in one run: each stage's result is its own
    task's, not the last stage's."""
    write_image_folder(tmp_path / "other", classes=2, per_class=4, size=32)
    first = extract_module.FeaturesStage(image_folder(zoo["data"]))
    second = extract_module.FeaturesStage(image_folder(tmp_path / "other"))
    settings = extract_module.Settings.make(batch_size=4, progress=False)
    cache = extract_module.Cache(tmp_path / "cache")
    outcome = extract_module.run_stages([zoo["a"]], [first, second], settings, cache)["a"]
    assert outcome.results[first].features.shape[0] == 15
    assert outcome.results[second].features.shape[0] == 8


def _three_models(zoo):
    return [zoo["a"], zoo["b"], zoo["headless"]]


@pytest.mark.parametrize("budget, decodes", [(1 << 30, 15), (20_000, 45), (0, 45)])
def test_a_groups_passes_share_its_decoded_images(zoo, tmp_path, monkeypatch, budget, decodes):
    """Issue 15: a resize group's passes decode each image once, kept (as
    uint8, exactly) across them while they fit the budget, and decode again
    per pass beyond it (20,000 bytes hold one batch of 4 but not the set);
    the features are bit-identical either way."""
    files = counting_decodes(monkeypatch)
    monkeypatch.setattr(extract_module, "_DECODED_BYTES", budget, raising=False)
    kept = extract(_three_models(zoo), zoo["data"], cache=tmp_path / "kept", batch_size=4, models_per_pass=1,
                   progress=False)
    assert len(files) == decodes and len(set(files)) == 15
    monkeypatch.setattr(extract_module, "_DECODED_BYTES", 0)
    again = extract(_three_models(zoo), zoo["data"], cache=tmp_path / "again", batch_size=4, models_per_pass=1,
                    progress=False)
    for label in kept:
        np.testing.assert_array_equal(kept[label].features, again[label].features)


def test_kept_images_remember_the_undecodable_ones(zoo, tmp_path, monkeypatch):
    """A replayed pass skips and reports the images the first pass could not
    decode, without decoding them again."""
    import shutil

    shutil.copytree(zoo["data"], tmp_path / "data")
    bad = tmp_path / "data" / "class1" / "broken.jpg"
    bad.write_bytes(b"not a JPEG")
    files = counting_decodes(monkeypatch)
    with pytest.warns(RuntimeWarning, match="1 of 16 images"):
        got = extract(_three_models(zoo), tmp_path / "data", cache=tmp_path / "c", batch_size=4, models_per_pass=1,
                      progress=False)
    assert len(files) == 16 and len(set(files)) == 16
    for label, fs in got.items():
        assert fs.skipped == ["class1/broken.jpg"] and fs.features.shape[0] == 15
        np.testing.assert_array_equal(fs.labels, image_folder(zoo["data"]).labels)


def test_a_reference_budget_stops_passes_over_kept_images(zoo, tmp_path, monkeypatch):
    """"auto" stops each model's reference pass early: the images a stopped
    pass decoded are replayed to the next model, each decoded once, and the
    statistics are those of decoding per pass."""
    from ped_fast.zoo import reference_stats

    write_image_folder(tmp_path / "reference", classes=4, per_class=100, size=32, seed=8, labelled=False)
    files = counting_decodes(monkeypatch)
    options = dict(batch_size=50, models_per_pass=1, progress=False, reference_images="auto",
                   reference_tolerance=0.5)
    kept = reference_stats(_three_models(zoo), tmp_path / "reference", cache=tmp_path / "kept", **options)
    assert len(files) == len(set(files)) < 400
    monkeypatch.setattr(extract_module, "_DECODED_BYTES", 0)
    again = reference_stats(_three_models(zoo), tmp_path / "reference", cache=tmp_path / "again", **options)
    for label, stats in kept.items():
        assert 256 <= stats.count < 400 and stats.count == again[label].count
        np.testing.assert_array_equal(stats.mean, again[label].mean)
        np.testing.assert_array_equal(stats.std, again[label].std)


def test_a_stopped_pass_leaves_the_rest_to_the_next():
    """_Store: a pass that stops after two batches keeps them; the next
    replays them and decodes from the first image not kept, in the same
    batch windows, with failures remembered."""
    images = list(range(10))
    starts = []

    def decode(start):
        starts.append(start)
        for first in range(start, len(images), 3):
            window = images[first:first + 3]
            good = [i for i in window if i != 4]
            yield (np.array(good), torch.tensor([[i / 255.0] for i in good]),
                   [(i, "broken") for i in window if i == 4])

    reuse = extract_module._Reuse(1 << 20)
    reuse.keep = True
    store = reuse.store("stage", "key")
    first = store.batches(decode)
    seen = [next(first), next(first)]
    first.close()
    assert store.next == 6 and not store.complete
    everything = list(store.batches(decode))
    assert starts == [0, 6] and store.complete
    assert [b[0].tolist() for b in everything] == [[0, 1, 2], [3, 5], [6, 7, 8], [9]]
    assert [b[2] for b in everything] == [[], [(4, "broken")], [], []]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(seen, everything))
    assert all(kept.dtype == torch.uint8 for _, kept, _ in store.kept)
    assert [b[0].tolist() for b in store.batches(decode)] == [[0, 1, 2], [3, 5], [6, 7, 8], [9]]
    assert starts == [0, 6]


def test_batches_not_exact_as_bytes_are_kept_as_float():
    reuse = extract_module._Reuse(1 << 20)
    reuse.keep = True
    store = reuse.store("stage", "key")
    batch = torch.tensor([[0.5, 1 / 255.0]])
    assert list(store.batches(lambda start: iter([(np.array([0]), batch, [])])))
    assert store.kept[0][1].dtype == torch.float32
    (replayed,) = store.batches(None)
    assert torch.equal(replayed[1], batch)


def test_passes_hold_at_most_16_models_when_their_images_are_kept():
    """Issue 15: with tiny models the weights' budget (1 GiB) put a whole
    resize group in one pass, so the memory a screen held grew with the
    zoo; when the group's images are kept across passes, a pass holds at
    most 16 models (or models_per_pass)."""
    settings = extract_module.Settings.make(progress=False)
    stage = type("S", (), {"images": range(2000)})()
    key = extract_module.resize_key(SMALL_CONFIG)
    limit = extract_module._pass_limit(key, [stage], settings)
    members = [(None, type("L", (), {"model": torch.nn.Identity()})(), None)] * 16
    assert limit == 16
    assert extract_module._pass_full(members, settings, limit) and not extract_module._pass_full(members[1:],
                                                                                                   settings, limit)
    huge = extract_module.resize_key(dict(SMALL_CONFIG, input_size=(3, 4096, 4096)))
    assert extract_module._pass_limit(huge, [stage], settings) is None
    assert not extract_module._pass_full(members, dataclasses.replace(settings, models_per_pass=17), limit)


def test_a_model_whose_config_moves_it_to_a_group_already_run_is_run(zoo, tmp_path):
    """A model planned into one resize group (a stale remembered config)
    whose built config belongs to a group already run joins a new pass of
    that group instead of being left out."""
    from ped_fast.zoo import Cache, parse_spec, weights_identity

    cache = Cache(tmp_path / "c")
    spec = parse_spec(zoo["b"])
    identity = weights_identity(spec)
    stale = extract_module.canonical_config(dict(SMALL_CONFIG, input_size=(3, 16, 16)))
    cache.put("config", extract_module.data_config_key(spec, identity),
              {"model": spec.name, "identity": identity, "data_config": stale})
    got = extract([zoo["a"], zoo["b"]], zoo["data"], cache=cache, progress=False)
    data = image_folder(zoo["data"])
    want = timm_features(load_model(spec).model, [data.file(i) for i in range(len(data))], SMALL_CONFIG)
    np.testing.assert_array_equal(got["b"].features, want)


def _mapped_kb(path):
    """(mappings of `path` in this process, their resident kB), from /proc/self/smaps."""
    maps, resident, inside = 0, 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
                maps += inside
            elif inside and line.startswith("Rss:"):
                resident += int(line.split()[1])
    return maps, resident


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_results_hold_none_of_their_features_in_memory(zoo, tmp_path):
    """The cache checks an entry's checksum by reading it through the map it
    returns: a result keeping that map held each model's features resident
    until the screen ended, so a 200-model screen's peak memory grew with
    the zoo. Fresh and cached results map their features unread."""
    for run in ("fresh", "cached"):
        got = extract([zoo["a"], zoo["b"]], zoo["data"], cache=tmp_path, batch_size=4, progress=False)
        for fs in got.values():
            assert fs.cached == (run == "cached")
            assert _mapped_kb(fs.features.filename) == (1, 0), run
        del got


@pytest.mark.parametrize("name", ["test_vit", "resnet18.a1_in1k", "convnext_tiny.fb_in22k", "headless"])
def test_planning_builds_no_model_and_agrees_with_the_built_one(zoo, name, monkeypatch):
    """Issue 15: passes are planned from the config timm's builder resolves
    (the architecture's registered pretrained config and its tag, a
    folder's config.json overlaid), without building the model: planning
    built every model on the meta device, where timm's weight
    initialisation costs as much as building it (94 ms of each tiny
    model's 0.5 s screen). The plan is the built model's config."""
    from ped_fast.zoo.models import planned_data_config

    spec = zoo[name] if name in zoo else name
    built = load_model(spec, pretrained=False).data_config
    calls = []
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(args) or create(*args, **kwargs))
    assert planned_data_config(spec) == built
    assert calls == []


HEAP_SCRIPT = """
import resource, sys, torch
from ped_fast.zoo import extract
extract([sys.argv[1]], sys.argv[2], cache=sys.argv[3], progress=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a forward pass's activations: 8 of 4 MiB alive at once, then freed
    activations = [torch.ones(1 << 20) for _ in range(8)]
    del activations
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mmap and trim thresholds")
def test_extraction_keeps_activation_sized_blocks_in_the_heap(zoo, tmp_path):
    """Issue 15: glibc's thresholds follow what the process happened to
    free: blocks above the mmap threshold are fresh mappings, and more free
    memory than the trim threshold at the top of the heap goes back to the
    system, so a forward pass's activations were faulted in again, page by
    page, on every pass in some processes and not in others (one tiny
    ConvNeXt: 40-45 against 30-33 ms a batch). After an extraction the
    thresholds are where glibc's own rule ends (32 and 64 MiB): 20 rounds
    of 8 activations of 4 MiB fault one round's pages (8,192), not 20
    rounds' (about 164,000; on the old code 17,000 or 163,000, by process).
    A threshold the user set is left alone."""
    pages = (32 << 20) // os.sysconf("SC_PAGESIZE")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"}

    def faults(cache, **settings):
        done = subprocess.run([sys.executable, "-c", HEAP_SCRIPT, zoo["a"], str(zoo["data"]), str(tmp_path / cache)],
                              capture_output=True, text=True, env=dict(env, **settings), check=True)
        return int(done.stdout.split()[-1])

    assert faults("default") < 1.5 * pages
    assert faults("user's", MALLOC_MMAP_THRESHOLD_="131072") > 10 * pages


def test_each_pass_gives_the_memory_it_freed_back(zoo, tmp_path, monkeypatch):
    """Issue 15: glibc keeps freed heap memory resident, and passes of
    models of other sizes left holes the next pass could not fill, so a
    screen's peak memory crept up with its passes. After each pass the
    freed memory goes back (glibc's malloc_trim; nothing where the C
    library has none)."""
    trims = []
    monkeypatch.setattr(extract_module, "_malloc_trim", lambda: trims.append)
    extract([zoo["a"], zoo["b"]], zoo["data"], cache=tmp_path, models_per_pass=1, progress=False)
    assert trims == [0, 0]
    monkeypatch.setattr(extract_module, "_malloc_trim", lambda: None)
    extract([zoo["a"]], zoo["data"], cache=tmp_path / "again", progress=False)
