"""The screening layer where users really run it (issue 14): the report of a
screen that half failed, fp32 that is fp32, cache keys that hold what
changes numbers and nothing else, and a CLI a script can rely on."""
import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ped_fast.__main__ import main
from ped_fast.zoo import extract, screen
from conftest import gpu_expected
from test_zoo_scorers import gaussian_models, write_features
from zoo_helpers import small_checkpoint, write_image_folder

# The modules by import_module: ped_fast.zoo exports functions of the same
# names (extract, screen), which `import ... as` would resolve to.
extract_module = importlib.import_module("ped_fast.zoo.extract")
report_module = importlib.import_module("ped_fast.zoo.report")
scoring_module = importlib.import_module("ped_fast.zoo.scoring")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    write_image_folder(root / "data", classes=3, per_class=6, size=32)
    write_image_folder(root / "reference", classes=2, per_class=4, size=32, seed=5, labelled=False)
    return root


@pytest.fixture(scope="module")
def features_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust-features")
    labels = np.arange(30) % 3
    write_features(root / "f", labels, gaussian_models(np.random.default_rng(2), labels, {"a": 4, "b": 5}))
    return root / "f"


# 1. A finished screen never loses its report.

def test_one_scored_model_with_ground_truth_writes_the_whole_report(features_folder, tmp_path):
    """One model scored (the other failed) with ground truth: no ranking
    measures, yet the plot is drawn and all three files are this run's."""
    out = tmp_path / "out"
    out.mkdir()
    for name in report_module.FILES:  # an earlier run's report in the same folder
        (out / name).write_text("stale")
    (features_folder.parent / "broken").mkdir(exist_ok=True)
    folder = tmp_path / "f"
    shutil.copytree(features_folder, folder)
    np.save(folder / "b.npy", np.full((30, 5), np.nan))  # b fails: non-finite features
    results = screen(features=folder, ground_truth={"a": 0.5, "b": 0.6}, scorers="sfda", out=out,
                     cache=tmp_path / "c", progress=False)
    assert [row["name"] for row in results["models"] if row["error"]] == ["b"]
    assert "evaluation" not in results
    for name in report_module.FILES:
        assert (out / name).read_bytes()[:5] != b"stale", name
    assert (out / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_models_failed_still_draws_a_plot(tmp_path):
    results = {"scorers": ["sfda"], "models": [{"name": "m", "error": "ValueError: x", "scores": {}}]}
    report_module.plot_ranking(results, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_a_plot_that_fails_leaves_no_stale_png(features_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ranking.png").write_text("stale")

    def broken(results, path):
        raise RuntimeError("no backend")

    monkeypatch.setattr(report_module, "plot_ranking", broken)
    with pytest.warns(RuntimeWarning, match="ranking.png not drawn .RuntimeError: no backend"):
        screen(features=features_folder, scorers="sfda", out=out, cache=tmp_path / "c", progress=False)
    assert not (out / "ranking.png").exists()
    assert json.loads((out / "results.json").read_text())["models"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_report_that_cannot_be_written_keeps_the_old_set(features_folder, tmp_path, monkeypatch):
    """The csv fails after the json was written: the previous set stays
    whole (no new results.json beside an old results.csv)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in report_module.FILES:
        (out / name).write_text("old")

    def full_disk(results, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report_module, "write_csv", full_disk)
    results = {"scorers": ["sfda"], "models": []}
    with pytest.raises(OSError):
        report_module.write_report(results, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(report_module.FILES)
    assert all((out / name).read_text() == "old" for name in report_module.FILES)


# 3. fp32 means fp32; every row says what computed its features.

def test_fp32_extraction_turns_tf32_off_and_restores_it(folders, tmp_path, monkeypatch):
    """torch's own default is TF32 for cuDNN convolutions
    (cudnn.conv.fp32_precision "tf32"); a user may also have turned it on
    for matmul with the legacy flag. During extraction both are IEEE;
    after it, the user's settings are back (the legacy flag readable)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    seen = []
    forward = extract_module._forward

    def spy(model, batch, precision, **options):
        seen.append((matmul.fp32_precision, conv.fp32_precision))
        return forward(model, batch, precision, **options)

    monkeypatch.setattr(extract_module, "_forward", spy)
    before = matmul.fp32_precision
    # torch's flags are properties of its backend modules (monkeypatch
    # cannot restore them): set and restored by hand.
    matmul.allow_tf32 = True
    try:
        assert conv.fp32_precision == "tf32"
        extract("test_resnet", folders / "data", cache=tmp_path / "c", pretrained=False, progress=False)
        assert matmul.allow_tf32 and conv.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before
    assert seen and set(seen) == {("ieee", "ieee")}


def test_rows_record_the_device_and_math_of_their_features(folders, tmp_path, monkeypatch):
    arguments = dict(models="test_resnet", data=folders / "data", reference="self", cache=tmp_path / "c",
                     pretrained=False, progress=False)
    (row,) = screen(**arguments)["models"]
    assert row["device"].startswith("cpu (") and row["math"] == "fp32-ieee"
    monkeypatch.setattr(extract_module, "device_name", lambda device: "cuda:0 (elsewhere)")
    (cached,) = screen(**arguments)["models"]
    assert "scores" in cached["cached"] and cached["device"] == row["device"]
    (bf16,) = screen(**dict(arguments, precision="bf16"))["models"]
    assert bf16["math"] == "autocast-bf16" and "features" not in bf16["cached"]


def test_fp32_features_on_the_gpu_match_the_cpu(folders, tmp_path):
    """Runs wherever a GPU is present (and fails where one is expected,
    PED_FAST_EXPECT_GPU=1, but torch cannot use it)."""
    if not torch.cuda.is_available():
        if gpu_expected():
            pytest.fail("a GPU is expected here (PED_FAST_EXPECT_GPU) but torch.cuda.is_available() is False",
                        pytrace=False)
        pytest.skip("needs a CUDA device")
    checkpoint = small_checkpoint(tmp_path / "m", "test_convnext", 1)
    common = dict(cache=tmp_path / "c", progress=False)
    cpu = extract(f"m:test_convnext={checkpoint}", folders / "data", device="cpu", **common)["m"]
    gpu = extract(f"m:test_convnext={checkpoint}", folders / "data", device="cuda", **common)["m"]
    assert not gpu.cached and gpu.device.startswith("cuda")
    np.testing.assert_allclose(gpu.features, cpu.features, rtol=1e-4, atol=1e-4 * np.abs(cpu.features).max())


# 4. Cache keys: everything that changes numbers, nothing that does not.

def test_a_library_upgrade_recomputes_features(folders, tmp_path, monkeypatch):
    first = extract("test_resnet", folders / "data", cache=tmp_path / "c", pretrained=False, progress=False)
    versions = dict(extract_module.library_versions(), timm="99.0")
    monkeypatch.setattr(extract_module, "library_versions", lambda: versions)
    again = extract("test_resnet", folders / "data", cache=tmp_path / "c", pretrained=False, progress=False)
    assert not again["test_resnet"].cached and again["test_resnet"].key != first["test_resnet"].key


def test_the_display_name_and_tag_are_not_in_the_key(folders, tmp_path):
    """test_resnet and test_resnet.r160_in1k with the same (random, seeded)
    weights are one model: computed once."""
    common = dict(cache=tmp_path / "c", pretrained=False, progress=False)
    extract("a:test_resnet", folders / "data", **common)
    assert extract("b:test_resnet.r160_in1k", folders / "data", **common)["b"].cached


def test_a_moved_features_folder_finds_its_scores(features_folder, tmp_path):
    folder = tmp_path / "one"
    shutil.copytree(features_folder, folder)
    first = screen(features=folder, scorers="sfda", cache=tmp_path / "c", progress=False)
    moved = tmp_path / "two"
    folder.rename(moved)
    again = screen(features=moved, scorers="sfda", cache=tmp_path / "c", progress=False)
    assert all("scores" in row["cached"] for row in again["models"])
    assert [row["scores"] for row in again["models"]] == [row["scores"] for row in first["models"]]


def test_changed_scoring_code_recomputes_scores(features_folder, tmp_path, monkeypatch):
    screen(features=features_folder, scorers="sfda", cache=tmp_path / "c", progress=False)
    monkeypatch.setattr(scoring_module, "scoring_code", lambda: "another version")
    again = screen(features=features_folder, scorers="sfda", cache=tmp_path / "c", progress=False)
    assert not any("scores" in row["cached"] for row in again["models"])


def test_the_scoring_code_hash_covers_the_scorers():
    sources = {path.name for path in scoring_module.Path(scoring_module.__file__).parent.parent.glob("scorers/*.py")}
    assert {"sfda.py", "logme.py"} <= sources
    assert len(scoring_module.scoring_code()) == 16


# 9. Exit codes and errors a script can rely on.

def run_cli(*arguments, cwd=None):
    return subprocess.run([sys.executable, "-m", "ped_fast", *map(str, arguments)], capture_output=True, text=True,
                          cwd=cwd)


def test_a_bad_argument_is_two_lines_and_exit_2(folders, tmp_path):
    done = run_cli("screen", "--models", "test_resnat", "--data", folders / "data", "--reference", "self",
                   "--cache", tmp_path / "c", "--no-pretrained")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: python -m ped_fast screen [options]")
    assert "unknown timm model name 'test_resnat'" in lines[1]


def test_scorer_names_are_case_insensitive_and_the_wrong_one_is_named(features_folder, tmp_path, capsys):
    assert main(["screen", "--features", str(features_folder), "--scorers", "SFDA,LogME", "--cache",
                 str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["screen", "--features", str(features_folder), "--scorers", "sfda,logmee", "--quiet"])
    assert "unknown scorer 'logmee'" in capsys.readouterr().err


def test_an_out_that_is_a_file_fails_before_any_work(folders, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(extract_module, "run_stages", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        main(["screen", "--models", "test_resnet", "--data", str(folders / "data"), "--reference", "self",
              "--no-pretrained", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "file"), "--quiet"])
    assert exit_info.value.code == 2


def test_a_read_only_out_is_a_failure_of_the_run(features_folder, tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(report_module.tempfile, "TemporaryFile", read_only)
    status = main(["screen", "--features", str(features_folder), "--cache", str(tmp_path / "c"), "--out",
                   str(tmp_path / "ro"), "--quiet"])
    assert status == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(tmp_path / "ro") in line and "Read-only file system" in line


def test_a_full_disk_during_the_run_is_one_line_exit_3(features_folder, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c" / "score" / "x.json"))

    monkeypatch.setattr(report_module, "write_csv", full)
    status = main(["screen", "--features", str(features_folder), "--cache", str(tmp_path / "c"), "--out",
                   str(tmp_path / "o"), "--quiet"])
    assert status == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ped-fast screen: failed: [Errno 28] No space left on device") and "x.json" in line


def test_an_unexpected_error_is_logged_exit_4(features_folder, tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(report_module, "write_csv", bug)
    arguments = ["screen", "--features", str(features_folder), "--cache", str(tmp_path / "c"), "--out",
                 str(tmp_path / "o"), "--quiet"]
    assert main(arguments) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected error: KeyError" in err
    log = tmp_path / "o" / "ped-fast-error.log"
    assert "Traceback" in log.read_text() and str(log) in err
    assert main(arguments + ["--verbose"]) == 4
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_one_line_exit_130(features_folder, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring_module, "score_features", interrupted)
    status = main(["screen", "--features", str(features_folder), "--cache", str(tmp_path / "c"), "--out",
                   str(tmp_path / "o"), "--quiet"])
    assert status == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "interrupted" in line and "run the same command again to resume" in line


def test_evaluate_takes_the_screens_out_folder(features_folder, tmp_path, capsys):
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"a": 0.4, "b": 0.6}))
    assert main(["screen", "--features", str(features_folder), "--cache", str(tmp_path / "c"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--results", str(tmp_path / "o"), "--ground-truth", str(truth)]) == 0
    assert "PED+SFDA" in capsys.readouterr().out


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip().endswith("0.1.0")


def test_progress_in_a_log_is_a_few_lines(folders, tmp_path):
    """stderr to a pipe: a line per quarter of each pass, not a bar redrawn
    per batch."""
    done = run_cli("extract", "--models", "test_resnet", "--data", folders / "data", "--cache", tmp_path / "c",
                   "--no-pretrained", "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("features of ")]
    assert 2 <= len(lines) <= 6 and "\r" not in done.stderr, lines


def test_demo_and_finetune_options_have_help():
    done = run_cli("demo", "--help")
    assert "--cache" in done.stdout
    done = run_cli("finetune", "--help")
    text = " ".join(done.stdout.split())
    assert "--optimizer {adamw,sgd} adamw (decoupled" in text and "--augmentation {none,light} none: the" in text


def test_cache_verb_lists_verifies_and_prunes(folders, tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["extract", "--models", "a:test_resnet,b:test_convnext", "--data", str(folders / "data"),
                 "--cache", str(cache), "--no-pretrained", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "features" in listing and " a " in f" {listing} " and "test_convnext" in listing
    assert main(["cache", "verify", "--cache", str(cache)]) == 0
    (damaged,) = [p for p in (cache / "features").glob("*.features.npy")
                  if "test_resnet" in (p.parent / (p.name.split(".")[0] + ".json")).read_text()]
    with open(damaged, "r+b") as f:  # one flipped bit in the data, not the header
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))
    capsys.readouterr()
    assert main(["cache", "verify", "--cache", str(cache)]) == 1
    assert damaged.name.split(".")[0] in capsys.readouterr().out
    assert main(["cache", "prune", "--model", "test_conv*", "--dry-run", "--cache", str(cache)]) == 0
    assert len(list((cache / "features").glob("*.json"))) == 2
    assert main(["cache", "prune", "--damaged", "--cache", str(cache)]) == 0
    assert main(["cache", "prune", "--model", "test_conv*", "--cache", str(cache)]) == 0
    assert list((cache / "features").glob("*.json")) == []
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "prune", "--cache", str(cache)])
    assert exit_info.value.code == 2


def test_ped_runs_once_per_model_whatever_the_scorers(features_folder, tmp_path, monkeypatch):
    """Issue 15: PED does not depend on the scorer; --scorers
    sfda,logme,nleep,gbc runs it once per model (and reduce's PCA once)."""
    score_module = importlib.import_module("ped_fast.score")
    calls = {"ped": 0, "reduce": 0}
    ped, reduce = score_module.ped, score_module._reduce

    def counted_ped(*args, **kwargs):
        calls["ped"] += 1
        return ped(*args, **kwargs)

    def counted_reduce(*args, **kwargs):
        calls["reduce"] += 1
        return reduce(*args, **kwargs)

    monkeypatch.setattr(score_module, "ped", counted_ped)
    monkeypatch.setattr(score_module, "_reduce", counted_reduce)
    results = screen(features=features_folder, scorers="sfda,logme,nleep,gbc", reference="self", reduce="pca:3",
                     cache=tmp_path / "c", progress=False)
    assert len(results["models"]) == 2 and not any(row["error"] for row in results["models"])
    assert calls == {"ped": 2, "reduce": 2}


def test_ped_scores_equal_ped_score_for_each_scorer():
    import ped_fast

    rng = np.random.default_rng(5)
    labels = np.arange(90) % 3
    x = rng.standard_normal((3, 6))[labels] + rng.standard_normal((90, 6))
    together = ped_fast.ped_scores(x, labels, ["sfda", "logme", "gbc"], rescale="self")
    for name, score in together.items():
        alone = ped_fast.ped_score(x, labels, name, rescale="self", return_baseline=True)
        assert (score.ped, score.baseline, score.result.steps) == (alone.ped, alone.baseline, alone.result.steps)


def test_a_cached_rerun_reads_no_checkpoint_bytes(folders, tmp_path, monkeypatch):
    """Issue 15: a checkpoint's digest (and what a .pth holds) is remembered
    in the cache by path, size, mtime and inode: a re-run in a new process
    (the in-process memo cleared) hashes and opens no checkpoint."""
    digest = importlib.import_module("ped_fast.zoo.digest")
    models = importlib.import_module("ped_fast.zoo.models")
    torch.manual_seed(3)
    import timm

    pth = tmp_path / "m.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), pth)
    specs = f"a:test_resnet={small_checkpoint(tmp_path / 'a', 'test_resnet', 1)},b:test_resnet={pth}"
    arguments = dict(models=specs, data=folders / "data", reference="self", cache=tmp_path / "c", progress=False)
    first = screen(**arguments)
    monkeypatch.setattr(digest, "_MEMO", {})
    reads = []
    sha256, torch_load = digest._sha256, models._torch_load
    monkeypatch.setattr(digest, "_sha256", lambda path: reads.append(path) or sha256(path))
    monkeypatch.setattr(models, "_torch_load", lambda path, mmap: reads.append(path) or torch_load(path, mmap))
    again = screen(**arguments)
    assert reads == []
    assert [row["scores"] for row in again["models"]] == [row["scores"] for row in first["models"]]
    os.utime(pth, ns=(pth.stat().st_atime_ns, pth.stat().st_mtime_ns + 1_000_000_000))
    monkeypatch.setattr(digest, "_MEMO", {})
    screen(**arguments)  # a new version of the file is read again
    assert reads == [pth, pth]


def test_one_decode_per_resize_group_whatever_the_normalisation(folders, tmp_path, monkeypatch):
    """Issue 15: models at one input size with ImageNet and (0.5, 0.5, 0.5)
    normalisation, given interleaved with a model at another size: each
    image is decoded once per resize group, and every model's features are
    timm's own transform's (bit for bit: normalising the shared batch is the
    same float32 subtraction and division)."""
    import timm

    from ped_fast.zoo import image_folder, load_model
    from ped_fast.zoo.models import save_model_dir
    from zoo_helpers import SMALL_CONFIG, timm_features

    imagenet = dict(SMALL_CONFIG, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    larger = dict(SMALL_CONFIG, input_size=(3, 48, 48))
    specs = []
    for name, arch, config in (("half", "test_resnet", SMALL_CONFIG), ("big", "test_convnext", larger),
                               ("imagenet", "test_convnext", imagenet), ("vit", "test_vit", imagenet)):
        torch.manual_seed(len(specs))
        model = timm.create_model(arch, **({"img_size": 32} if arch == "test_vit" else {}))
        folder = save_model_dir(model, tmp_path / name, architecture=arch, pretrained_cfg=config,
                                model_args={"img_size": 32} if arch == "test_vit" else None)
        specs.append(f"{name}:{arch}={folder}")
    images_module = importlib.import_module("ped_fast.zoo.images")
    decoded = []
    load_rgb = images_module.load_rgb
    monkeypatch.setattr(extract_module, "load_rgb", lambda path: decoded.append(path) or load_rgb(path))
    results = extract(specs, folders / "data", cache=tmp_path / "c", progress=False)
    images = image_folder(folders / "data")
    assert len(decoded) == 2 * len(images) and len(set(decoded)) == len(images)
    files = [images.file(i) for i in range(len(images))]
    for spec in specs:
        label = spec.split(":")[0]
        loaded = load_model(spec)
        np.testing.assert_array_equal(results[label].features, timm_features(loaded.model, files,
                                                                             loaded.data_config))


def test_reference_budgets(folders, tmp_path):
    """Issue 15: a seeded subset of N reference images (the same for every
    model) and "auto", which stops each model's pass once its statistics
    are known to the tolerance; each row says how many images it used."""
    from ped_fast.zoo import image_files, reference_stats

    write_image_folder(tmp_path / "reference", classes=4, per_class=100, size=32, seed=8, labelled=False)
    a = small_checkpoint(tmp_path / "a", "test_resnet", 1)
    b = small_checkpoint(tmp_path / "b", "test_convnext", 2)
    common = dict(models=f"a:test_resnet={a},b:test_convnext={b}", data=folders / "data",
                  reference=tmp_path / "reference", cache=tmp_path / "c", progress=False, batch_size=100)
    whole = screen(**common)
    assert [row["reference_images"] for row in whole["models"]] == [400, 400]
    subset = screen(**common, reference_images=100)
    assert [row["reference_images"] for row in subset["models"]] == [100, 100]
    # The subset is seeded: the statistics are those of the same 100 images.
    stats = dict(cache=tmp_path / "c", progress=False, batch_size=100)
    some = reference_stats(f"a:test_resnet={a}", tmp_path / "reference", reference_images=100, **stats)["a"]
    assert some.cached and some.count == 100
    everything = reference_stats(f"a:test_resnet={a}", tmp_path / "reference", **stats)["a"]
    assert everything.cached and not np.allclose(some.mean, everything.mean)
    # Another cache, another run: the same 100 images, the same statistics.
    again = reference_stats(f"a:test_resnet={a}", tmp_path / "reference", reference_images=100,
                            **dict(stats, cache=tmp_path / "other"))["a"]
    assert not again.cached and image_files(tmp_path / "reference").subset(100).paths == \
        image_files(tmp_path / "reference").subset(100).paths
    np.testing.assert_array_equal(again.mean, some.mean)
    loose = screen(**common, reference_images="auto", reference_tolerance=0.5)
    assert all(256 <= row["reference_images"] < 400 for row in loose["models"])
    tight = screen(**common, reference_images="auto", reference_tolerance=0.001)
    assert [row["reference_images"] for row in tight["models"]] == [400, 400]
    cached = screen(**common, reference_images="auto", reference_tolerance=0.5)
    assert [row["reference_images"] for row in cached["models"]] == \
        [row["reference_images"] for row in loose["models"]]
    with pytest.raises(TypeError, match="reference_images must be an integer >= 1"):
        screen(**common, reference_images="some")


def test_forward_threads_leave_cores_to_the_decoding_workers(folders, tmp_path, monkeypatch):
    """Issue 15: torch's threads during the forward passes are the cores
    this process may use less the decoding workers (never oversubscribed),
    or --threads; restored afterwards."""
    seen = []
    forward = extract_module._forward

    def spy(model, batch, precision, **options):
        seen.append(torch.get_num_threads())
        return forward(model, batch, precision, **options)

    monkeypatch.setattr(extract_module, "_forward", spy)
    monkeypatch.setattr(extract_module, "available_cores", lambda: 3)
    before = torch.get_num_threads()
    common = dict(cache=tmp_path / "c", pretrained=False, progress=False)
    extract("test_resnet", folders / "data", workers=1, **common)
    assert set(seen) == {2} and torch.get_num_threads() == before
    seen.clear()
    extract("test_convnext", folders / "data", threads=1, **common)
    assert set(seen) == {1}


def test_cli_flags_reach_the_screen(folders, tmp_path):
    """--reference-images, --threads, --predictions, --no-ema and
    --models-per-pass go through to the screen (and a bad budget is an
    argument error)."""
    checkpoint = small_checkpoint(tmp_path / "m", "test_resnet", 5)
    common = ["screen", "--models", f"m:test_resnet={checkpoint}", "--data", str(folders / "data"), "--reference",
              str(folders / "reference"), "--cache", str(tmp_path / "c"), "--quiet"]
    assert main(common + ["--out", str(tmp_path / "o"), "--reference-images", "3", "--threads", "1",
                          "--predictions", "exact", "--scorers", "sfda,leep", "--no-ema", "--models-per-pass",
                          "2"]) == 0
    (row,) = json.loads((tmp_path / "o" / "results.json").read_text())["models"]
    assert row["reference_images"] == 3 and row["scores"]["leep"]["baseline"] is not None
    assert list((tmp_path / "c" / "predictions").glob("*.logits.npy"))
    with pytest.raises(SystemExit) as exit_info:
        main(common + ["--reference-images", "many"])
    assert exit_info.value.code == 2
