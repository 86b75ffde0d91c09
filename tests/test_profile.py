"""`core run --profile`: torch.profiler's trace and top-operators table, on the CPU."""

import json

import pytest

torch = pytest.importorskip("torch")

from chipbench.measure.profiling import (  # noqa: E402
    ACTIVE_ITERATIONS,
    SKIP_ITERATIONS,
    WARMUP_ITERATIONS,
    StepProfiler,
    device_activity,
    top_operators,
)

NEEDED = SKIP_ITERATIONS + WARMUP_ITERATIONS + ACTIVE_ITERATIONS


def _train(profiler, iterations):
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(iterations):
        loss = model(torch.randn(8, 16)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        profiler.step()


def test_a_profiled_loop_writes_a_chrome_trace_and_ranks_operators(tmp_path):
    profiler = StepProfiler(tmp_path, 0, "cpu")
    _train(profiler, NEEDED + 2)
    summary = profiler.close()
    assert summary["iterations"] == [NEEDED - ACTIVE_ITERATIONS + 1, NEEDED]
    trace = json.loads((tmp_path / summary["trace"]).read_text())
    assert trace["traceEvents"], "the trace records events"
    ops = summary["top_ops"]
    names = {row["op"] for row in ops}
    assert "aten::addmm" in names or "aten::linear" in names
    assert summary["sorted_by"] == "own host time"
    times = [row["self_host_ms"] for row in ops]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert all(row["calls"] >= ACTIVE_ITERATIONS for row in ops if row["op"] == "aten::addmm")
    assert not list(tmp_path.glob("profile/*.tmp")), "no temporary file is left"


@pytest.mark.parametrize("iterations", [2, NEEDED - 1])
def test_too_few_iterations_record_no_partial_profile(tmp_path, iterations):
    """A run that ends before the recorded iterations are all done (even while recording) has
    no profile, only the reason."""
    profiler = StepProfiler(tmp_path, 0, "cpu")
    _train(profiler, iterations)
    summary = profiler.close()
    assert set(summary) == {"error"}
    assert "{} training iteration(s)".format(iterations) in summary["error"]
    assert "needs {}".format(NEEDED) in summary["error"]
    assert not (tmp_path / "profile" / "trace-rank0.json").exists()


def test_a_device_without_profiler_activity_is_profiled_on_the_host():
    assert device_activity("cpu") is None
    assert device_activity("nosuchdevice") is None
    assert device_activity("cuda") is not None


def test_operators_ranked_by_device_time_where_there_is_one():
    class Event:
        def __init__(self, key, host, device):
            self.key, self.count = key, 3
            self.self_cpu_time_total = self.cpu_time_total = host
            self.self_cuda_time_total = self.cuda_time_total = device  # torch before 2.4

    rows = top_operators([Event("a", 900.0, 10.0), Event("b", 100.0, 5000.0)], by_device=True)
    assert [r["op"] for r in rows] == ["b", "a"]
    assert rows[0]["self_device_ms"] == 5.0
    rows = top_operators([Event("a", 900.0, 10.0), Event("b", 100.0, 5000.0)], by_device=False)
    assert [r["op"] for r in rows] == ["a", "b"]


def test_core_run_profile_writes_a_trace_a_top_ops_table_and_warns(tmp_path, capsys):
    """`core run --profile` on the CPU with no vendor code: a Chrome trace in the run folder, the
    top operators in result.json and report.md, and the warning that its throughput is not
    comparable (in the report and in `core compare`)."""
    from chipbench.cli import main

    out = tmp_path / "run"
    assert main(["run", "spirals", "--vendor", "cpu", "--output", str(out), "--profile"]) == 0
    result = json.loads((out / "result.json").read_text())
    profile = result["profile"]
    assert profile["iterations"] == [NEEDED - ACTIVE_ITERATIONS + 1, NEEDED]
    assert json.loads((out / profile["trace"]).read_text())["traceEvents"]
    ops = [row["op"] for row in profile["top_ops"]]
    assert "aten::addmm" in ops and not any(op.startswith("ProfilerStep") for op in ops)
    assert json.loads((out / "spec.json").read_text())["profile"] is True
    report = (out / "report.md").read_text()
    assert "## Profile" in report and "| aten::addmm |" in report
    assert "profiled run: p_whole, p_train and p_core include the profiler's overhead" in report
    capsys.readouterr()
    plain = tmp_path / "plain"
    assert main(["run", "spirals", "--vendor", "cpu", "--output", str(plain)]) == 0
    assert "profile" not in json.loads((plain / "result.json").read_text())
    capsys.readouterr()
    assert main(["compare", str(plain), str(out)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "profiled run" in line]
    assert len(warnings) == 1 and "run" in warnings[0]


def test_an_unprofiled_run_has_no_profile():
    from chipbench.measure.profiling import profile_lines, profile_warning
    from chipbench.run.resultrecord import RunResult

    def record(**extra):
        return RunResult.from_json(dict({"case": "spirals", "status": "finished", "metrics": {}},
                                        **extra), "result.json")

    assert profile_warning(record()) is None and profile_lines(record()) == []
    assert profile_warning(record(profile="forged")) is None and profile_lines(record(profile=3)) == []
    failed = record(profile={"error": "the run trained 2 iteration(s)\n# forged"})
    assert failed.profile is not None and "profile" not in failed.other  # a typed record
    assert "profile" in record(profile="forged").other  # another kind: kept as read, not shown
    lines = profile_lines(failed)
    assert "not recorded" in lines[-1] and "\n" not in "".join(lines)
    assert "iterations ?-?" in profile_warning(failed)
