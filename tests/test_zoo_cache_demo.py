"""demo_zoo builds under a lock of its own: a second build of the same
configuration waits for the first, and only a dead build's temporaries are
removed (the old build removed every hidden entry, a live build's too)."""
import multiprocessing
import threading
import time

import pytest

from ped_fast.zoo._files import temporary_name
from ped_fast.zoo.cache import Cache
from ped_fast.zoo.demo_zoo import Checkpoint, DemoConfig, build_demo
from ped_fast.zoo.finetune import Recipe

TINY = DemoConfig(n_source=60, n_train=20, n_test=20, n_photo=20, n_reference=10,
                  zoo=(Checkpoint("resnet-digits0-4", "test_resnet", "digits0-4", 1),),
                  source_recipe=Recipe(lr=2e-3, head_lr_scale=1.0, batch_size=32), finetune_seeds=(0,))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    build_demo(cache, config=TINY, ground_truth=False, progress=False)
    return cache


def _hold_demo(cache, key, ready, release):
    with Cache(cache).lock("demo", key):
        ready.set()
        release.wait(120)


def test_a_second_build_waits_and_keeps_the_live_builds_temporaries(built):
    root = built / "demo" / TINY.key()
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_demo, args=(built, TINY.key(), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        live = root / "zoo" / temporary_name("resnet-digits0-4")  # the live build's checkpoint in progress
        live.mkdir()
        second = threading.Thread(target=build_demo, args=(built,),
                                  kwargs={"config": TINY, "ground_truth": False, "progress": False})
        second.start()
        time.sleep(1.0)
        assert second.is_alive() and live.is_dir()  # waiting, and the live build's work is untouched
        release.set()  # the first build ends (killed, as far as its temporary is concerned)
        second.join(120)
        assert not second.is_alive()
        assert not live.exists()  # now a dead build's leftover: removed
    finally:
        release.set()
        holder.join(60)


def test_leftovers_of_any_naming_are_removed_when_no_build_runs(built):
    root = built / "demo" / TINY.key()
    leftovers = [root / temporary_name("reference"), root / "zoo" / ".resnet-digits0-4.abc123",
                 root / "finetune" / ".resnet-digits0-4.seed0.json.x1y2"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if path.parent != root / "finetune" else path.write_text("{")
    demo = build_demo(built, config=TINY, ground_truth=False, progress=False)
    assert demo.trained == [] and not any(path.exists() for path in leftovers)
