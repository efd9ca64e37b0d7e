"""Two processes that need the same model train it once: the second waits on the cache
file's training lock, then finds the first one's file (``workbench.cache.training_lock``)."""

from __future__ import annotations

import threading
import time

from workbench.cache import training_lock


def test_a_second_holder_waits_until_the_first_lets_go(tmp_path):
    path = tmp_path / "models" / "seed0.weights.h5"  # its folder does not exist yet
    events = []
    with training_lock(path):
        def second():
            with training_lock(path):  # another open file: flock blocks it as another process
                events.append(("second in", time.monotonic()))

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert events == [], "the second holder got in while the first held the lock"
        released = time.monotonic()
    waiter.join(timeout=10)
    assert [name for name, _ in events] == ["second in"] and events[0][1] >= released
    assert (tmp_path / ".locks" / "models-seed0.weights.h5.lock").is_file()
    assert not path.parent.exists()  # nothing is written where the model goes


def test_an_unwritable_cache_runs_the_block_unlocked(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ran = []
    with training_lock(blocker / "sub" / "model.h5"):  # its folder cannot be made
        ran.append(True)
    assert ran == [True]


def test_the_lite_scorer_waits_for_the_lock_then_loads_what_the_holder_saved(monkeypatch,
                                                                           tmp_path):
    """While it waited, another process trained and saved the file: loaded, not trained."""
    from workbench.safety import lite

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    calls = []

    class FakeModel:
        def load_weights(self, path):
            calls.append("load")

    class FakeScorer:
        model, encoder = FakeModel(), None

    monkeypatch.setattr(lite, "build_lite_scorer", lambda seed, encoder=None: FakeScorer())
    monkeypatch.setattr(lite, "train_lite", lambda *args, **kwargs: calls.append("train"))
    path = lite.cache_path(0)
    with training_lock(path):
        loader = threading.Thread(target=lite.load_lite_scorer, args=(0,))
        loader.start()
        time.sleep(0.5)
        assert calls == [], "the scorer was loaded or trained while another held its lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")  # the holder saves its model
    loader.join(timeout=10)
    assert calls == ["load"]
