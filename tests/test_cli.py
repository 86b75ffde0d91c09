"""The ``core`` command: help without torch, vendor errors, bad inputs (exit 2, one line)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chipbench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_core(*args, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "chipbench"] + list(args), cwd=str(ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=full_env, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_help_does_not_import_torch():
    code = ("import sys\nfrom chipbench.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=str(ROOT), check=True).stdout
    assert "usage: core" in out and out.strip().endswith("False")


def test_metax_run_here_fails_cleanly():
    proc = run_core("run", "cases/retinanet", "--vendor", "metax")
    assert_one_line_error(proc, "vendor 'metax' is not available", "not a MetaX build", "cpu")


def test_unknown_vendor_and_unknown_case():
    assert_one_line_error(run_core("run", "cases/retinanet", "--vendor", "nosuchchip"),
                          "unknown vendor 'nosuchchip'", "available: cpu")
    assert_one_line_error(run_core("run", "cases/nosuchcase", "--vendor", "cpu"),
                          "unknown case", "retinanet")


def test_debug_shows_traceback():
    proc = run_core("--debug", "run", "retinanet", "--vendor", "nosuchchip")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    proc = run_core("run", "retinanet", "--vendor", "nosuchchip", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.parametrize("args, fragments", [
    (["--set", "train.batch_size=-4"], ["train.batch_size must be positive"]),
    (["--set", "train.learning_rate=0.1"], ["unknown config key 'train.learning_rate'"]),
    (["--set", "train.batch_size=many"], ["must be an integer"]),
    (["--precision", "fp16"], ["precision fp16 is not supported", "use one of fp32"]),
    (["--precision", "fp8"], ["unknown precision 'fp8'"]),
    (["--config", "NoSuchHardware"], ["config 'NoSuchHardware' not found", "C500x1x8"]),
    (["--set", "model.backbone_weights=file:///nowhere/resnet50-0676ba61.pth"],
     ["does not exist"]),
    (["--nproc-per-node", "0"], ["--nproc-per-node must be at least 1"]),
])
def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys, args, fragments):
    code = main(["run", "retinanet", "--vendor", "cpu", "--output", str(tmp_path / "run")] + args)
    err = capsys.readouterr().err
    assert code == 2, err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in error_lines[0]
    if args == ["--precision", "fp16"]:  # names what this machine offers (bf16 only where its kernels run)
        from chipbench.plugins import cpu

        assert "use one of {} (".format(", ".join(cpu.supported_precisions())) in error_lines[0]


def test_broken_yaml_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [1\n")
    assert main(["run", "retinanet", "--vendor", "cpu", "--config", str(bad)]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err


def test_missing_data_dir_keeps_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "retinanet", "--vendor", "cpu", "--output", str(out),
                 "--data-dir", str(tmp_path / "no-coco")])
    assert code == 2
    assert "data dir" in capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "does not exist" in result["error"]


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"precious": true}')
    assert main(["run", "retinanet", "--vendor", "cpu", "--output", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text()) == {"precious": True}


def test_vendors_lists_builtins_with_reasons(capsys):
    assert main(["vendors"]) == 0
    out = capsys.readouterr().out
    assert "cpu" in out and "<- auto" in out
    assert "not a MetaX build" in out and "cuda" in out


def test_info_and_doctor_on_cpu(capsys):
    assert main(["info", "--vendor", "cpu"]) == 0
    assert "collective_backend: gloo" in capsys.readouterr().out
    assert main(["doctor", "--vendor", "cpu", "--static"]) == 0  # live: tests/test_conformance.py
    out = capsys.readouterr().out
    assert "PASS  returns:device_count" in out and " 0 failed" in out
    assert "FAIL" not in out


def coco_with_bad_file(root, corrupt_json=False):
    from tests.conftest import write_coco

    images = [{"id": i, "file_name": "{}.jpg".format(i), "width": 64, "height": 64}
              for i in range(1, 5)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 30, 30],
                    "iscrowd": 0, "area": 900} for i in range(1, 5)]
    write_coco(root, images, annotations)
    if corrupt_json:
        (root / "annotations" / "instances_val2017.json").write_text("{broken")
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_in_dataloader_worker_is_one_line(tmp_path, capsys, workers):
    root = coco_with_bad_file(tmp_path / "coco")
    for image in (root / "train2017").iterdir():
        image.write_bytes(b"\x00garbage")
    out = tmp_path / "run"
    code = main(["run", "retinanet", "--vendor", "cpu", "--data-dir", str(root), "--output",
                 str(out), "--set", "model.backbone_weights=none", "--set", "train.batch_size=2",
                 "--set", "data.num_workers={}".format(workers)])
    err = capsys.readouterr().err
    assert code == 2, err
    line = [x for x in err.splitlines() if x.startswith("error: ")][0]
    assert "is unreadable" in line and "re-download it" in line and "Traceback" not in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "is unreadable" in result["error"]


def test_broken_annotation_json_via_cli(tmp_path, capsys):
    root = coco_with_bad_file(tmp_path / "coco", corrupt_json=True)
    code = main(["run", "retinanet", "--vendor", "cpu", "--data-dir", str(root), "--output",
                 str(tmp_path / "run"), "--set", "model.backbone_weights=none"])
    err = capsys.readouterr().err
    assert code == 2 and "instances_val2017.json is not valid JSON" in err


def test_quick_exit_keeps_what_a_normal_exit_would_write(tmp_path):
    """exit_now (the console scripts' exit): threads joined, atexit handlers run, buffered
    output flushed to a pipe, the exit code kept."""
    log = tmp_path / "log.txt"
    script = (
        "import atexit, logging, sys, threading, time\n"
        "from chipbench.util.exiting import exit_now\n"
        "logging.basicConfig(filename={!r}, level=logging.INFO)\n"
        "atexit.register(lambda: sys.stdout.write(' atexit'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), sys.stdout.write(' thread'))).start()\n"
        "logging.info('logged')\n"
        "sys.stdout.write('buffered')\n"
        "exit_now(3)\n").format(str(log))
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered thread atexit"
    assert "logged" in log.read_text()


def test_console_script_exit_code_and_output_through_a_pipe():
    proc = run_core("vendors")
    assert proc.returncode == 0 and "cpu" in proc.stdout, proc.stderr
    assert_one_line_error(run_core("run", "retinanet", "--vendor", "nosuchchip"), "unknown vendor")


def test_the_recorded_command_is_one_a_user_can_type_again(monkeypatch):
    from chipbench.run.runner import command_line

    monkeypatch.setattr("sys.argv", ["/site-packages/chipbench/__main__.py", "run", "--resume",
                                     "runs/a b"])
    assert command_line() == "core run --resume 'runs/a b'"
    monkeypatch.setattr("sys.argv", ["/usr/bin/core", "run", "retinanet"])
    assert command_line() == "core run retinanet"
