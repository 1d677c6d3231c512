"""One rule for every output the tool writes (exports, batch scripts, pictures, spectrum files): an
existing file the tool did not write is never replaced unless ``--force`` (its bytes stay as they
were), its own is replaced, and a target that is not a regular file (a FIFO) is refused in one line,
never read and never replaced."""

from __future__ import annotations

import os
import stat

import pytest

from distributed_surface.core.errors import UserError
from distributed_surface.storage import MARK, carries_mark, is_spectrum, write_atomically
from helpers import assert_one_line_error

FOREIGN = b"my own notes, not written by the tool\n"
MARK_LINE = f"# {MARK}\n"
HESSIAN = ["--top-k", "2", "--trace-probes", "4", "--density-probes", "1", "--lanczos-steps", "8"]


def foreign(path):
    path.write_bytes(FOREIGN)
    return path


def fifo(path):
    os.mkfifo(path)
    return path


@pytest.fixture
def writers(surface_2d, run_args, tmp_path):
    """Each writer: the target it writes, and its command line with and without --force."""
    return {
        "export csv": (tmp_path / "t.csv", ["export", surface_2d, "--format", "csv", "--out", "t.csv"], ["--force"]),
        "export vtp": (tmp_path / "t.vtp", ["export", surface_2d, "--format", "vtp", "--out", "t.vtp"], ["--force"]),
        "sbatch": (tmp_path / "job.sbatch", ["sbatch", *run_args[1:], "--time", "1:00:00", "--script", "job.sbatch",
                                             "--out", "s.h5"], ["--force"]),  # fmt: skip
        "plot png": (tmp_path / "pics" / "s2_2d_contour_train_loss.png",
                     ["plot", surface_2d, "--kind", "contour", "--out-dir", "pics"], ["--force"]),  # fmt: skip
        "plot pdf": (tmp_path / "pics" / "s2_2d_heatmap_train_loss.pdf",
                     ["plot", surface_2d, "--kind", "heatmap", "--format", "pdf", "--out-dir", "pics"], ["--force"]),  # fmt: skip
        "plot svg": (tmp_path / "pics" / "s2_2d_contour_train_loss.svg",
                     ["plot", surface_2d, "--kind", "contour", "--format", "svg", "--out-dir", "pics"], ["--force"]),  # fmt: skip
    }


@pytest.fixture
def no_sbatch(monkeypatch):
    """No SLURM here: ``dsurf sbatch`` writes its script and then fails to submit it (exit 2)."""
    monkeypatch.setenv("PATH", "/nonexistent")


WRITERS = ["export csv", "export vtp", "sbatch", "plot png", "plot pdf", "plot svg"]


def written(rc, err, name):
    """The writer wrote its file (sbatch writes, then finds no sbatch to submit with)."""
    if name == "sbatch":
        return rc == 2 and "sbatch is not on PATH" in err
    return rc == 0


@pytest.mark.parametrize("name", WRITERS)
def test_a_writer_refuses_a_foreign_file_replaces_its_own_and_obeys_force(dsurf, writers, no_sbatch, name):
    target, args, force = writers[name]
    target.parent.mkdir(exist_ok=True)
    foreign(target)
    rc, out, err = dsurf(*args)
    assert_one_line_error(rc, out, err, "did not write", "--force", target.name)
    assert target.read_bytes() == FOREIGN
    rc, out, err = dsurf(*args, *force)
    assert written(rc, err, name), err
    assert target.read_bytes() != FOREIGN
    assert target.read_text().startswith("x,y,") if name == "export csv" else carries_mark(target)
    before = os.stat(target).st_ino
    rc, out, err = dsurf(*args)  # its own: replaced without --force
    assert written(rc, err, name), err
    assert os.stat(target).st_ino != before  # (a new file, renamed over the old one)
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", WRITERS)
def test_a_fifo_target_is_refused_never_read(dsurf, writers, no_sbatch, name):
    """(Reading a FIFO with no writer would block: the test would hang, not fail.)"""
    target, args, force = writers[name]
    target.parent.mkdir(exist_ok=True)
    fifo(target)
    for extra in ([], force):
        rc, out, err = dsurf(*args, *extra)
        assert_one_line_error(rc, out, err, "not a regular file")
        assert stat.S_ISFIFO(os.stat(target).st_mode)


def test_export_to_dev_stdout_as_a_pipe_is_refused(dsurf, surface_2d, tmp_path):
    read, write = os.pipe()
    try:
        rc, out, err = dsurf("export", surface_2d, "--format", "csv", "--out", f"/proc/self/fd/{write}")
        assert_one_line_error(rc, out, err, "not a regular file")
    finally:
        os.close(read)
        os.close(write)


def test_a_fifo_surface_out_is_refused(dsurf, run_args, tmp_path):
    fifo(tmp_path / "s.h5")
    for extra in ([], ["--overwrite"], ["--resume"]):
        rc, out, err = dsurf(*run_args, "--x", "-1:1:3", "--out", "s.h5", *extra)
        assert_one_line_error(rc, out, err, "not a regular file")
        assert stat.S_ISFIFO(os.stat(tmp_path / "s.h5").st_mode)


def test_the_spectrum_file_replaces_only_a_spectrum(dsurf, run_args, tmp_path):
    args = ["hessian", *run_args[1:], *HESSIAN, "--out", "h.h5"]
    target = foreign(tmp_path / "h.h5")
    for extra in ([], ["--overwrite"]):
        rc, out, err = dsurf(*args, *extra)
        assert_one_line_error(rc, out, err, "h.h5")
        assert target.read_bytes() == FOREIGN
    target.unlink()
    assert dsurf(*args)[0] == 0 and is_spectrum(str(target))
    assert dsurf(*args, "--overwrite")[0] == 0 and is_spectrum(str(target))
    fifo(tmp_path / "f.h5")
    rc, out, err = dsurf("hessian", *run_args[1:], *HESSIAN, "--out", "f.h5", "--overwrite")
    assert_one_line_error(rc, out, err, "not a regular file")


def test_the_spectrum_writer_refuses_a_foreign_file_that_appeared_meanwhile(tmp_path):
    """What `dsurf hessian` checked before computing holds at the write too."""
    from distributed_surface.storage import write_spectrum

    target = foreign(tmp_path / "h.h5")
    with pytest.raises(UserError, match="did not write"):
        write_spectrum(str(target), config_json="{}", eigenvalues=[1.0], eigenvectors={}, min_eigenvalue=0.0,
                       trace=1.0, trace_stderr=0.0, density_grid=[0.0], density=[1.0], attrs={})  # fmt: skip
    assert target.read_bytes() == FOREIGN


def test_write_atomically_leaves_the_old_file_where_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text(f"{MARK_LINE}old\n")

    def half(temporary):
        temporary.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="No space left"):
        write_atomically(target, half, ours=carries_mark, who="a test")
    assert target.read_text() == f"{MARK_LINE}old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert write_atomically(target, lambda t: t.write_text("new\n"), ours=carries_mark, who="a test") == target
    assert target.read_text() == "new\n"


def test_the_mark_is_found_in_the_tail_of_a_large_file(tmp_path):
    """(A PDF names its creator at its end.)"""
    path = tmp_path / "big.pdf"
    path.write_bytes(b"x" * (1 << 20) + MARK_LINE.encode())
    assert carries_mark(path)
    path.write_bytes(b"x" * (1 << 20))
    assert not carries_mark(path)



def test_a_run_leaves_a_foreign_picture_alone_and_still_succeeds(dsurf, tiny, tmp_path):
    """The pictures a run draws at its end follow the rule too; the run's file is what it was for."""
    pictures = tmp_path / "s_plots"
    pictures.mkdir()
    target = foreign(pictures / "s_2d_contour_train_loss.png")
    rc, out, err = dsurf("run", "--model", tiny.spec("model"), "--data", tiny.spec("data"), "--no-progress",
                         "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s.h5")  # fmt: skip
    assert rc == 0, err
    assert "no pictures" in err and "did not write" in err and "--force" in err
    assert target.read_bytes() == FOREIGN
