"""Real training on the embedded synthetic set reaches the case's target (no mocks).

The one convergence run of the test matrix: marked slow, so the cpu env runs it and the old-stack
env does not (its tiny end-to-end and two-worker runs prove that stack trains)."""

import json

import pytest

from chipbench.cli import main


@pytest.mark.slow
def test_embedded_default_converges(tmp_path, capsys, monkeypatch):
    """The README's main job without what other tests cover and convergence does not need:
    checkpoints (test_faults, the resume tests) and the CPU's GEMM peak for MFU (test_report);
    about 6 % of the job, which keeps this test within 3 minutes on a slow 2-core CPU."""
    monkeypatch.setenv("CHIPBENCH_CPU_PEAK_GEMM_S", "0")
    out = tmp_path / "run"
    assert main(["run", "cases/retinanet", "--output", str(out),
                 "--set", "run.checkpoint=false"]) == 0
    stdout = capsys.readouterr().out
    assert "converged: true" in stdout
    result = json.loads((out / "result.json").read_text())
    metrics = result["metrics"]
    assert result["status"] == "finished" and metrics["converged"] is True
    assert metrics["mAP"] >= 0.35 == result["target"]
    assert metrics["epochs"] < result["config"]["train"]["epochs"]  # stopped at the target
    print("convergence: mAP {:.4f} after {} epochs, e2e {:.0f} s, p_train {:.2f} img/s".format(
        metrics["mAP"], metrics["epochs"], metrics["e2e_time"], metrics["p_train"]))
