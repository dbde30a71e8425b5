"""patchlab.runs: the run directory's lock, its temporaries, the metrics.csv reader and writer."""

import multiprocessing

import pytest

from patchlab import runs as R


def _hold(root, ready, release):
    with R.lock_run_dir(root):
        ready.set()
        release.wait(30)


@pytest.mark.slow
def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "run", ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(R.RunBusyError, match=f"in use: another process \\(pid {holder.pid}"):
            with R.lock_run_dir(tmp_path / "run"):
                pass
    finally:
        release.set()
        holder.join(30)
    with R.lock_run_dir(tmp_path / "run"):  # free again once the holder is gone
        pass


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "run", ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()  # no clean-up: the lock file stays, the operating system drops the lock
    holder.join(30)
    assert (tmp_path / "run" / R.LOCK_FILE).is_file()
    with R.lock_run_dir(tmp_path / "run"):
        pass


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    for name in (".checkpoint.pt.abc.tmp", ".config.json.tmp", "checkpoint.pt", "notes.tmp"):
        (tmp_path / name).write_text("x")
    removed = R.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pt.abc.tmp", ".config.json.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "notes.tmp"]


def test_a_file_is_not_a_run_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(R.RunDirectoryError, match="is a file"):
        with R.lock_run_dir(tmp_path / "f"):
            pass


def test_metrics_log_round_trips_and_drops_rows_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    log = R.MetricsLog(path, keep_until=0)
    for step in (1, 2, 3):
        log.add(0.5 / step)
        log.write(step, 0.5 / step, 1.0, 1e-3, 4, "cpu")
    rows = R.read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] == 0.25 and rows[0]["peak_mem_mib"] is None
    with open(path, "a") as fh:
        fh.write("4,0.1")  # a row being written when the process died
    assert [r["step"] for r in R.read_metrics(path)] == [1, 2, 3]
    R.MetricsLog(path, keep_until=2)  # resumed from the checkpoint of step 2
    assert [r["step"] for r in R.read_metrics(path)] == [1, 2]
    assert R.read_metrics(tmp_path / "missing.csv") == []
