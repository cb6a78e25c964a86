"""The FairChem process runner: output to console and log, exit codes, forwarded preemption signals."""
from __future__ import annotations

import signal
import sys
import threading
import time

from launcher.core import preemption
from trainers.fairchem.process import format_command, run_process


def test_output_is_streamed_and_logged(tmp_path):
    seen = []
    cmd = [sys.executable, "-c", "import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"]
    res = run_process(cmd, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, log_path=tmp_path / "logs" / "x.log",
                      echo=seen.append)
    assert res.returncode == 3 and not res.preempted
    assert res.describe_exit() == "exit code 3"
    assert sorted(seen) == ["one", "two"]
    log = (tmp_path / "logs" / "x.log").read_text()
    assert log.startswith("$ " + format_command(cmd)) and "one\n" in log and "# exit 3" in log


def test_preemption_signal_is_forwarded_to_the_child(tmp_path):
    preemption.reset()
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    seen = []

    def preempt_when_started():
        while "started" not in seen:
            time.sleep(0.05)
        preemption.request_preemption(signal.SIGUSR2)

    t = threading.Thread(target=preempt_when_started)
    t.start()
    t0 = time.time()
    try:
        res = run_process(cmd, env={}, cwd=tmp_path, log_path=tmp_path / "p.log", echo=seen.append)
    finally:
        t.join()
        preemption.reset()
    assert res.preempted
    assert res.returncode == -signal.SIGUSR2 and "SIGUSR2" in res.describe_exit()
    assert time.time() - t0 < 30


def test_fairchem_metric_lines_become_jsonl(tmp_path):
    import json

    from trainers.fairchem.logparse import MetricsTap, parse_metrics

    tap = MetricsTap(tmp_path / "metrics.jsonl", "train-x")
    for line in [
        "2026-11-26 11:40:00 (INFO): Loading model: equiformer_v2",
        "2026-11-26 11:40:01 (INFO): energy_mae: 1.23e+00, forces_mae: 4.00e-01, loss: 5.00e+01, lr: 2.50e-03, "
        "epoch: 7.69e-01, step: 1.00e+01",
        "2026-11-26 11:40:02 (INFO): Evaluating on val.",
        "2026-11-26 11:40:03 (INFO): energy_mae: 0.9000, forces_mae: 0.3500, loss: 40.0000, epoch: 1.0000",
    ]:
        tap(line)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in recs] == ["train", "val"]
    assert recs[0]["step"] == 10 and recs[0]["energy_mae"] == 1.23 and recs[1]["forces_mae"] == 0.35
    assert parse_metrics("Total time taken: 12.0") is None
