"""The monitor: a vendor hook that misbehaves during a run is seen (stderr, result.json, report)."""

import json

import chipbench.run.runner
from chipbench.cli import main
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.measure.monitor import DeviceMonitor
from chipbench.measure.monitor_samples import summarize
from tests.conftest import vendor_module

TINY = ["--set", "train.max_iters=1", "--set", "data.synthetic.train_images=4",
        "--set", "data.synthetic.val_images=2", "--set", "data.synthetic.image_size=64",
        "--set", "run.monitor_interval_s=0.1", "--set", "data.num_workers=0",
        "--set", "run.checkpoint=false"]


def host_with(module, name):
    def build(*args, **kwargs):
        host = build_host(load_entry_points=False)
        host.add(module, name, "test")
        return host
    return build


def test_wrong_type_from_memory_hook_is_warned_counted_and_reported(tmp_path, monkeypatch,
                                                                     capsys):
    liar = vendor_module("liar", device_memory_query=lambda device: "12 GiB")
    monkeypatch.setattr(chipbench.run.runner, "build_host", host_with(liar, "liar"))
    out = tmp_path / "run"
    assert main(["run", "retinanet", "--vendor", "liar", "--output", str(out)] + TINY) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "device_memory_query" in line]
    assert len(warnings) == 1 and "liar" in warnings[0] and "expected a MemoryInfo" in warnings[0]
    result = json.loads((out / "result.json").read_text())
    failures = result["metrics"]["monitor_failures"]
    assert list(failures) == ["device_memory_query"] and failures["device_memory_query"]["count"] >= 1
    assert result["metrics"]["monitor_errors"] >= 1
    report = (out / "report.md").read_text()
    assert "not measured: device memory" in report and "device_memory_query" in report
    # the other hook kept working: util was still sampled
    samples = [json.loads(line) for line in (out / "monitor" / "rank0.jsonl").read_text().splitlines()]
    assert any("util_percent" in s for s in samples)
    assert all("mem_used_bytes" not in s for s in samples)
    # the timeline: samples labelled with the training phase, summary and plot in the report
    assert {"train", "eval"} <= {s["phase"] for s in samples}
    assert all("host_cpu_percent" in s and "time" in s for s in samples)
    assert "## Monitor" in report and "| rank0 | util (%) |" in report
    assert (out / "plots" / "timeline.svg").is_file() and "![timeline]" in report


def test_raising_sample_hook_keeps_memory_and_warns_once(tmp_path, capsys):
    def boom(device):
        raise RuntimeError("sensor gone")

    host = build_host(load_entry_points=False)
    host.add(vendor_module("flaky", device_sample=boom), "flaky", "test")
    facade = select_device(host, "flaky")
    monitor = DeviceMonitor(facade, "cpu", tmp_path / "m.jsonl", interval_s=60)
    for _ in range(3):
        monitor.sample()
    summary = monitor.summary()
    assert summary["monitor_failures"]["device_sample"]["count"] == 3
    assert "sensor gone" in summary["monitor_failures"]["device_sample"]["error"]
    assert summary["mem_used_peak_bytes"] > 0
    assert capsys.readouterr().err.count("warning: vendor 'flaky' hook device_sample") == 1


def test_samples_carry_phase_and_host_figures(tmp_path):
    facade = select_device(build_host(load_entry_points=False), "cpu")
    monitor = DeviceMonitor(facade, "cpu", tmp_path / "m.jsonl", interval_s=60)
    monitor.sample()
    monitor.set_phase("eval")
    record = monitor.sample()
    assert record["phase"] == "eval" and record["host_mem_used_bytes"] > 0
    assert "workers_cpu_percent" in record
    rows = {r["figure"]: r for r in summarize([monitor.sample(), record])}
    assert rows["host memory"]["max"] >= rows["host memory"]["mean"] > 0


def test_the_monitor_s_names_stay_where_importers_find_them():
    """The monitor's jobs live in modules of their own (host samples, CPU share, sample files);
    every public name is still importable from chipbench.measure.monitor, as the same object."""
    import chipbench.measure.cpu_share
    import chipbench.measure.monitor
    import chipbench.measure.monitor_samples
    import chipbench.measure.samplers

    for module, names in ((chipbench.measure.cpu_share, ("CpuShare", "cpu_share", "reduce_cpu_share",
                                                 "starved_warning", "machine_cores",
                                                 "torch_threads", "STARVED_SHARE", "SHARE_RATIO")),
                          (chipbench.measure.monitor_samples, ("read_samples", "summarize",
                                                       "SUMMARY_FIELDS")),
                          (chipbench.measure.samplers, ("HostSampler",))):
        for name in names:
            assert getattr(chipbench.measure.monitor, name) is getattr(module, name), name
    for name in ("DeviceMonitor", "hook_timeout", "ENV_HOOK_TIMEOUT", "FIGURES_OF_HOOK"):
        assert hasattr(chipbench.measure.monitor, name), name


def test_the_memory_row_names_the_source_the_samples_record():
    from chipbench.measure.monitor_samples import summarize

    rss = [{"time": 1.0, "mem_used_bytes": 2**30, "mem_source": "psutil (process RSS / machine "
            "total)"}]
    device = [{"time": 1.0, "mem_used_bytes": 2**30, "mem_source": "cudaMemGetInfo"}]
    assert [r["figure"] for r in summarize(rss)] == ["process resident memory, RSS"]
    assert [r["figure"] for r in summarize(device)] == ["device-wide memory used"]
    assert [r["figure"] for r in summarize([{"time": 1.0, "mem_used_bytes": 1}])] == [
        "device memory"]
