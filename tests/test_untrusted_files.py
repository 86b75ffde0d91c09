"""Untrusted files: a run folder (and everything in it), a ``result.json``, a data dir and a
``--config`` may hold symbolic links to files elsewhere, FIFOs, devices, huge files and YAML
bombs. Each is refused in ONE line naming the file and what it is, nothing outside the run folder
is written, and nothing blocks (FIFOs are opened for real, in a subprocess with a timeout or under
an alarm)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from chipbench.cli import main
from chipbench.errors import UserError
from chipbench.run.config import MAX_YAML_NODES, load_yaml
from chipbench.run.runfiles import read_json_dict, write_json_atomic
from chipbench.util import safeio

ROOT = Path(__file__).resolve().parents[1]
PRECIOUS = "a file of the user's, outside the run folder\n"
RUN = ["run", "retinanet", "--vendor", "cpu"]


@contextlib.contextmanager
def no_hang(seconds: int = 10) -> Iterator[None]:
    """Fail, instead of waiting for ever, where an open or a read blocks (a FIFO)."""
    def alarm(signum, frame):
        raise TimeoutError("blocked for {} s".format(seconds))

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_error(err: str) -> str:
    """The one ``error:`` line of a command's stderr (and no traceback)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "; " in errors[0], "no fix given: " + errors[0]
    return errors[0]


def cli(args: List[str], capsys) -> Tuple[int, str]:
    """``core ARGS`` in this process: its exit code and its one error line."""
    with no_hang(60):
        code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, one_error(err) if code else ""


def core(args: List[str], timeout: float = 90) -> Tuple[int, str]:
    """``core ARGS`` in a subprocess (what may block is then killed by the timeout)."""
    proc = subprocess.run([sys.executable, "-m", "chipbench"] + [str(a) for a in args],
                          cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)
    return proc.returncode, one_error(proc.stderr) if proc.returncode else ""


def outside(tmp_path: Path) -> Path:
    """A folder beside the run folder holding one file of the user's."""
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    (folder / "victim.txt").write_text(PRECIOUS)
    return folder


def untouched(folder: Path) -> None:
    """Nothing in the outside folder was written, appended to or created."""
    assert sorted(p.name for p in folder.iterdir()) == ["victim.txt"]
    assert (folder / "victim.txt").read_text() == PRECIOUS


# --------------------------------------------------------------------------------------------------
# 1. writes never follow links out of the run folder
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def resumable(tiny_run, tmp_path) -> Path:
    """A copy of the shared tiny run, left as if interrupted (the checkpoint hard-linked)."""
    run_dir = tmp_path / "run"
    shutil.copytree(str(tiny_run), str(run_dir),
                    copy_function=lambda s, d: os.link(s, d) if s.endswith(".pt")
                    else shutil.copy2(s, d))
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    result["status"] = "interrupted"
    path.write_text(json.dumps(result))
    return run_dir


def replace_with_link(path: Path, target: Path) -> None:
    if os.path.lexists(str(path)):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(str(target), str(path))


LINKED = ["result.json.tmp", "progress.json.tmp", "spec.json.tmp", "checkpoints/last.pt.tmp",
          "logs/rank0.log", "monitor/rank0.jsonl", ".lock-node0"]


@pytest.mark.parametrize("name", LINKED)
@pytest.mark.parametrize("target", ["victim.txt", "created-by-chipbench"])
def test_resume_refuses_a_linked_file_and_writes_nothing_outside(resumable, tmp_path, capsys,
                                                                name, target):
    elsewhere = outside(tmp_path)
    replace_with_link(resumable / name, elsewhere / target)
    before = (resumable / "result.json").read_bytes()
    code, error = cli(["run", "--resume", resumable], capsys)
    assert code == 2
    assert "{} is a {}symbolic link to {}".format(
        name, "" if target == "victim.txt" else "dangling ", elsewhere / target) in error, error
    untouched(elsewhere)
    assert (resumable / "result.json").read_bytes() == before
    assert os.path.islink(str(resumable / name))


def test_resume_names_every_link_and_special_file_at_once(resumable, tmp_path, capsys):
    elsewhere = outside(tmp_path)
    replace_with_link(resumable / "logs" / "rank0.log", elsewhere / "victim.txt")
    replace_with_link(resumable / "errors", elsewhere)  # a whole folder linked elsewhere
    os.mkfifo(str(resumable / "monitor" / "rank1.jsonl"))
    code, error = cli(["run", "--resume", resumable], capsys)
    assert code == 2
    assert "logs/rank0.log is a symbolic link" in error
    assert "errors is a symbolic link to {}".format(elsewhere) in error
    assert "monitor/rank1.jsonl is a FIFO (named pipe)" in error
    untouched(elsewhere)


def test_progress_json_that_is_a_folder_is_named_itself(resumable, tmp_path, capsys):
    (resumable / "progress.json").unlink()
    (resumable / "progress.json").mkdir()
    code, error = cli(["run", "--resume", resumable], capsys)
    assert code == 2 and "progress.json is a folder" in error and ".tmp" not in error, error
    with pytest.raises(safeio.FileRefused) as refused:  # and where a run writes it
        write_json_atomic(resumable / "progress.json", {"epochs": []})
    assert refused.value.path == str(resumable / "progress.json")
    assert "progress.json is a folder" in refused.value.one_line()
    assert not (resumable / "progress.json.tmp").exists()


def test_an_untouched_run_folder_passes_the_check(resumable):
    from chipbench.run.runner import check_run_folder

    check_run_folder(resumable)  # what core run wrote is never refused


def test_every_writer_refuses_a_link_without_the_resume_check(tmp_path):
    """The primitives themselves: a folder linked while a run goes on is not written through."""
    from chipbench.run.sentinel import RunLock
    from chipbench.run.worker import RunLogHandler, record_error

    elsewhere = outside(tmp_path)
    victim = elsewhere / "victim.txt"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("result.json.tmp", "logs/rank0.log", "monitor/rank0.jsonl"):
        replace_with_link(run_dir / name, victim)
    replace_with_link(run_dir / ".lock-node0", elsewhere / "created-by-chipbench")
    replace_with_link(run_dir / "errors", elsewhere)

    with pytest.raises(safeio.FileRefused, match="result.json.tmp is a symbolic link"):
        write_json_atomic(run_dir / "result.json", {"status": "running"})
    with pytest.raises(safeio.FileRefused, match="rank0.log is a symbolic link"):
        RunLogHandler(str(run_dir / "logs" / "rank0.log"))
    with pytest.raises(safeio.FileRefused, match="rank0.jsonl is a symbolic link"):
        safeio.open_for_append(run_dir / "monitor" / "rank0.jsonl")
    with pytest.raises(safeio.FileRefused, match="lock-node0 is a dangling symbolic link"):
        RunLock(run_dir, 0)
    record_error(run_dir, 0, "boom")  # errors/ linked elsewhere: dropped, not written there
    untouched(elsewhere)


def test_a_stale_temporary_file_is_replaced_and_a_link_target_is_replaced_not_followed(
        tmp_path):
    elsewhere = outside(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json.tmp").write_text("left by a crash")
    write_json_atomic(run_dir / "result.json", {"status": "running"})
    assert read_json_dict(run_dir / "result.json") == {"status": "running"}
    assert not (run_dir / "result.json.tmp").exists()
    replace_with_link(run_dir / "report.md", elsewhere / "victim.txt")
    safeio.write_atomic(run_dir / "report.md", "# report\n")  # the link itself is replaced
    assert not os.path.islink(str(run_dir / "report.md"))
    assert (run_dir / "report.md").read_text() == "# report\n"
    untouched(elsewhere)


def test_checkpoint_save_and_load_never_go_through_a_link(tmp_path):
    import torch

    from chipbench.run import checkpoints as checkpoint

    elsewhere = outside(tmp_path)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    replace_with_link(path.with_name("last.pt.tmp"), elsewhere / "victim.txt")
    state = {"epoch": 0, "weights": torch.zeros(3)}
    with pytest.raises(safeio.FileRefused, match="last.pt.tmp is a symbolic link"):
        checkpoint.save(state, path)
    untouched(elsewhere)
    assert not path.exists()
    path.with_name("last.pt.tmp").unlink()
    path.with_name("last.pt.tmp").write_bytes(b"half a checkpoint")  # a crash's leftover
    checkpoint.save(state, path)
    assert not path.with_name("last.pt.tmp").exists()
    assert checkpoint.unpack(torch.load(str(path), weights_only=True))["epoch"] == 0
    os.replace(str(path), str(elsewhere / "real.pt"))
    os.symlink(str(elsewhere / "real.pt"), str(path))
    with pytest.raises(safeio.FileRefused, match="last.pt is a symbolic link"):
        checkpoint.load(path)
    path.unlink()
    os.mkfifo(str(path))
    with no_hang(), pytest.raises(safeio.FileRefused, match=r"last.pt is a FIFO \(named pipe\)"):
        checkpoint.load(path)


# --------------------------------------------------------------------------------------------------
# 2. reads: regular files only, bounded, never blocking
# --------------------------------------------------------------------------------------------------


def test_compare_of_a_fifo_result_does_not_block(tmp_path):
    (tmp_path / "run").mkdir()
    os.mkfifo(str(tmp_path / "run" / "result.json"))
    started = time.time()
    code, error = core(["compare", tmp_path / "run"], timeout=60)
    assert code == 2, error
    assert "result.json is a FIFO (named pipe)" in error
    assert time.time() - started < 60


def test_compare_of_a_result_linked_to_dev_zero(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    os.symlink("/dev/zero", str(tmp_path / "run" / "result.json"))
    code, error = cli(["compare", tmp_path / "run"], capsys)
    assert code == 2 and "result.json is a symbolic link to /dev/zero" in error, error
    code, error = cli(["compare", tmp_path / "run" / "result.json"], capsys)  # named itself
    assert code == 2 and "result.json is a character device" in error, error


def test_a_result_over_the_bound_is_refused_unread(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with open(str(tmp_path / "run" / "result.json"), "wb") as handle:  # sparse: no disk used
        handle.truncate(safeio.RUN_JSON_LIMIT + 1)
    code, error = cli(["compare", tmp_path / "run"], capsys)
    assert code == 2
    assert "result.json is too large: {:,} bytes, over the bound of {:,} bytes (64 MiB)".format(
        safeio.RUN_JSON_LIMIT + 1, safeio.RUN_JSON_LIMIT) in error, error


def test_config_fifo_does_not_block(tmp_path):
    os.mkfifo(str(tmp_path / "c.yaml"))
    code, error = core(RUN + ["--config", tmp_path / "c.yaml", "--output", tmp_path / "out"],
                       timeout=60)
    assert code == 2 and "c.yaml is a FIFO (named pipe)" in error, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, said", [
    (lambda p: "/dev/zero", "config /dev/zero is a character device"),
    (lambda p: os.symlink(str(p / "loop.yaml"), str(p / "loop.yaml")) or p / "loop.yaml",
     "loop.yaml is a symbolic link that loops"),
    (lambda p: os.symlink(str(p / "gone.yaml"), str(p / "c.yaml")) or p / "c.yaml",
     "c.yaml is a dangling symbolic link to"),
], ids=["dev-zero", "symlink-loop", "dangling-link"])
def test_config_that_is_no_file_says_what_it_is(tmp_path, capsys, make, said):
    code, error = cli(RUN + ["--config", make(tmp_path), "--output", tmp_path / "out"], capsys)
    assert code == 2 and said in error and "not found" not in error, error


def test_config_over_the_bound_is_refused(tmp_path, capsys):
    with open(str(tmp_path / "big.yaml"), "wb") as handle:
        handle.truncate(safeio.CONFIG_LIMIT + 1)
    code, error = cli(RUN + ["--config", tmp_path / "big.yaml"], capsys)
    assert code == 2 and "big.yaml is too large: {:,} bytes".format(
        safeio.CONFIG_LIMIT + 1) in error, error


def pipe_with(data: bytes) -> int:
    """The read end of a real pipe that a thread fills with ``data`` and closes."""
    read_end, write_end = os.pipe()

    def fill():
        with os.fdopen(write_end, "wb") as handle:
            try:
                handle.write(data)
            except BrokenPipeError:  # the reader stopped at its bound
                pass

    threading.Thread(target=fill, daemon=True).start()
    return read_end


def test_config_from_a_pipe_is_read(tmp_path, capsys):
    fd = pipe_with(b"train:\n  lr: 0.5\n  momentum: 0.8\n")
    try:
        with no_hang():
            assert load_yaml(Path("/dev/fd/{}".format(fd))) == {
                "train": {"lr": 0.5, "momentum": 0.8}}
    finally:
        os.close(fd)
    fd = pipe_with(b"train:\n  nosuch: 1\n")  # read through the whole command: its key is known
    try:
        code, error = cli(RUN + ["--config", "/dev/fd/{}".format(fd)], capsys)
    finally:
        os.close(fd)
    assert code == 2 and "unknown config key 'train.nosuch' in /dev/fd/{}".format(fd) in error


def test_a_pipe_over_the_bound_is_refused(tmp_path):
    fd = pipe_with(b"x" * 5000)
    try:
        with no_hang(), pytest.raises(safeio.FileRefused, match="too large: over the bound of "
                                                                "4,096 bytes"):
            safeio.read_bytes("/dev/fd/{}".format(fd), 4096, follow=True, pipes=True)
    finally:
        os.close(fd)


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash's process substitution")
def test_config_given_as_process_substitution(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  nosuch: 1\n")
    command = "{} -m chipbench run retinanet --vendor cpu --config <(cat {}) --output {}".format(
        sys.executable, tmp_path / "c.yaml", tmp_path / "out")
    proc = subprocess.run(["bash", "-c", command], cwd=str(ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=90)
    assert proc.returncode == 2, proc.stderr
    error = one_error(proc.stderr)
    assert "unknown config key 'train.nosuch' in /dev/fd/" in error, error


def test_data_dir_fifos_are_refused_not_waited_on(tmp_path, tiny_data):
    from chipbench.cases.retinanet.data import check_data_dir, decode_image_file, load_coco_api

    coco = tmp_path / "coco"
    shutil.copytree(str(tiny_data), str(coco))
    annotations = coco / "annotations" / "instances_val2017.json"
    annotations.unlink()
    os.mkfifo(str(annotations))
    with no_hang():
        with pytest.raises(safeio.FileRefused, match=r"instances_val2017.json is a FIFO"):
            check_data_dir(coco)
        with pytest.raises(safeio.FileRefused, match=r"instances_val2017.json is a FIFO"):
            load_coco_api(annotations)
    image = sorted((coco / "val2017").iterdir())[0]
    image.unlink()
    os.mkfifo(str(image))
    with no_hang(), pytest.raises(safeio.FileRefused, match=r"\.jpg is a FIFO"):
        decode_image_file(str(image))
    image.unlink()
    os.symlink("/dev/zero", str(image))  # a link in a data dir is followed: to a regular file
    with no_hang(), pytest.raises(safeio.FileRefused, match=r"\.jpg is a character device"):
        decode_image_file(str(image))


# --------------------------------------------------------------------------------------------------
# 3. YAML: alias bombs and keys smuggled in twice through merges
# --------------------------------------------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """``levels`` levels of ten aliases each (10**levels leaves) in a few hundred bytes."""
    lines = ["train:", "  lr:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += ["    - &a{} [{}]".format(n, ", ".join(["*a{}".format(n - 1)] * 10))
              for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    (tmp_path / "bomb.yaml").write_text(alias_bomb(9))
    assert len(alias_bomb(9)) < 600
    started = time.perf_counter()
    with pytest.raises(UserError) as refused:
        load_yaml(tmp_path / "bomb.yaml")
    assert time.perf_counter() - started < 0.5
    assert "expands to over {:,} values".format(MAX_YAML_NODES) in str(refused.value)
    code, error = cli(RUN + ["--config", tmp_path / "bomb.yaml"], capsys)
    assert code == 2 and "bomb.yaml expands to over" in error and "(line " in error, error


def test_a_key_set_by_two_merges_is_refused(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text(
        "train:\n  <<: {lr: 0.5}\n  <<: {lr: 0.9}\n")
    code, error = cli(RUN + ["--config", tmp_path / "m.yaml"], capsys)
    assert code == 2 and "sets key 'lr' twice (line 3" in error and "`<<`" in error, error
    (tmp_path / "list.yaml").write_text(
        "a: &a {lr: 0.5}\nb: &b {lr: 0.9, momentum: 0.8}\ntrain:\n  <<: [*a, *b]\n")
    with pytest.raises(UserError, match="sets key 'lr' twice"):
        load_yaml(tmp_path / "list.yaml")


def test_merges_that_set_each_key_once_still_work(tmp_path):
    (tmp_path / "ok.yaml").write_text(
        "a: &a {lr: 0.5, momentum: 0.8}\nb: &b {weight_decay: 0.1}\n"
        "train:\n  <<: [*a, *b]\n  <<: *a\n  lr: 0.9\n")
    assert load_yaml(tmp_path / "ok.yaml")["train"] == {"lr": 0.9, "momentum": 0.8,
                                                        "weight_decay": 0.1}
