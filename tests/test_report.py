"""``dsurf report``: one self-contained HTML file, its parts, bad input; and the page opened in a real
headless Chromium (marked ``browser``; skipped where Debian's chromium, chromium-driver or selenium is
absent): no error logged, the 3D plot's canvas drawn, and the value it holds at θ0 the file's."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from distributed_surface import cli
from distributed_surface.storage import read_surface
from helpers import assert_one_line_error

SAMPLES = 100
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "report_surfaces"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        common = ["--max-samples", str(SAMPLES), "--no-plot", "--no-progress"]
        assert cli.main(["run", "--x=-1:1:5", "--y=-1:1:5", "--out", "s2.h5", *common]) == 0
        test = ["--test-data", "distributed_surface.example:digits_test_data", "--max-test-samples", str(SAMPLES)]
        assert cli.main(["run", "--x=-1:1:5", "--out", "s1.h5", *test, *common]) == 0
        small = ["--top-k", "2", "--trace-probes", "2", "--density-probes", "1", "--lanczos-steps", "8"]
        assert cli.main(["hessian", "--max-samples", "50", *small, "--out", "h.h5", "--no-plot", "--no-progress"]) == 0
    return root


@pytest.fixture
def files(made, tmp_path):
    return {name: Path(shutil.copy(made / f"{name}.h5", tmp_path / f"{name}.h5")) for name in ("s2", "s1", "h")}


def plot_data(page: str, div_id: str) -> list[dict]:
    """The traces that the page gives plotly for the plot ``div_id`` (the JSON of its newPlot call)."""
    start = page.index(f'"{div_id}",') + len(f'"{div_id}",')
    traces, _ = json.JSONDecoder().raw_decode(page[start:].lstrip())
    return traces


def decoded(array) -> np.ndarray:
    """A plotly array: a list, or plotly's typed array ({dtype, bdata (base64), shape})."""
    if isinstance(array, dict):
        import base64

        values = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
        shape = [int(n) for n in str(array.get("shape", len(values))).split(",")]
        return values.reshape(shape)
    return np.asarray(array, dtype=float)


def test_report_is_one_offline_file_with_every_part(dsurf, files, tmp_path):
    rc, out, err = dsurf("report", "s2.h5", "s1.h5", "--out", "r.html")
    assert rc == 0 and err == "" and out.strip() == "r.html", (out, err)
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>\n<!-- written by distributed_surface")
    # self-contained: no script, style sheet or frame from elsewhere; plotly.js inside, once
    assert not re.search(r"<(script|link|iframe|img)[^>]+(src|href)=", page)
    assert page.count("<script type=\"text/javascript\">/**\n* plotly.js") == 1
    for div in ("surface-0-3d-train_loss", "surface-0-contour-train_loss", "surface-0-3d-train_acc", "surface-1-curve"):
        assert f'id="{div}"' in page, div
    # the 3D surface holds the file's values (rows of plotly's z are y), the value under the pointer
    data = read_surface(str(files["s2"]))
    (surface,) = plot_data(page, "surface-0-3d-train_loss")
    assert surface["type"] == "surface" and "%{z:.6g}" in surface["hovertemplate"]
    np.testing.assert_array_equal(decoded(surface["z"]), data.metrics["train_loss"].T)
    # the contour map marks θ0
    contour = plot_data(page, "surface-0-contour-train_loss")
    assert [t.get("name") for t in contour[1:]] == ["θ0"] and contour[1]["x"] == [0.0] and contour[1]["y"] == [0.0]
    # the 1D curves: train and test, loss and accuracy
    names = [t["name"] for t in plot_data(page, "surface-1-curve")]
    assert names == ["train loss", "train accuracy (%)", "test loss", "test accuracy (%)"]
    # the table and the provenance (dsurf info's text)
    assert "<th>loss at θ0</th>" in page and f"<td>{data.metrics['train_loss'][2, 2]:.6g}</td>" in page
    assert "provenance (dsurf info)" in page and "status:    complete" in page and "config:" in page


def test_checkpoints_and_partial_surfaces(dsurf, files, tmp_path):
    markers = [{"label": "θ0", "at": [0, 0]}, {"label": "b.pt", "at": [1, 0]}, {"label": "c.pt", "at": [0, 1]}]
    with h5py.File(files["s2"], "r+") as f:
        f["directions"].attrs["markers"] = json.dumps(markers)
        done = f["done"][()]
        done[4, :] = 0
        f["done"][...] = done
        f.attrs["status"] = "interrupted"
        path = f.create_group("trajectory")  # a trajectory's checkpoints, projected (as --trajectory stores them)
        path["x"], path["y"] = np.array([-0.5, -0.25, 0.0]), np.array([0.5, 0.2, 0.0])
        path["names"] = np.array([b"epoch_1", b"epoch_2", b"epoch_3"])
        path.attrs["explained_variance_ratio"] = np.array([0.9, 0.05])
    rc, out, err = dsurf("report", "s2.h5", "--out", "r.html")
    assert rc == 0 and err == "", err
    page = (tmp_path / "r.html").read_text()
    assert "partial: 20/25 points computed (interrupted)" in page
    contour = plot_data(page, "surface-0-contour-train_loss")
    (trajectory,) = [t for t in contour if t.get("name") == "trajectory"]
    assert trajectory["text"] == ["epoch_1", "epoch_2", "epoch_3"]
    np.testing.assert_array_equal(decoded(trajectory["x"]), [-0.5, -0.25, 0.0])
    labelled = {t["name"]: (t["x"], t["y"], t["text"], t["marker"]["color"]) for t in contour[1:] if t is not trajectory}
    assert labelled["b.pt"][:3] == ([1], [0], ["b.pt"]) and labelled["c.pt"][:3] == ([0], [1], ["c.pt"])
    assert len({v[3] for v in labelled.values()}) == 3
    z = decoded(contour[0]["z"])
    assert np.isnan(z[:, 4]).all() and np.isfinite(z[:, :4]).all()  # the points not computed are gaps


def test_hessian_maps_when_measured(dsurf, files, tmp_path):
    with h5py.File(files["s2"], "r+") as f:
        declared = json.loads(f.attrs["measurements"])
        for name, value in (("train_hess_max", 5.0), ("train_hess_min", -0.5)):
            f.create_dataset(name, data=np.full(f["done"].shape, value))
            declared.append({"name": name, "dtype": "float64", "shape": []})
        f.attrs["measurements"] = json.dumps(declared)
    rc, out, err = dsurf("report", "s2.h5", "--out", "r.html")
    assert rc == 0 and err == "", err
    maps = plot_data((tmp_path / "r.html").read_text(), "surface-0-hessian")
    assert [t["name"] for t in maps] == ["λmax", "λmin", "|λmin / λmax|"]
    np.testing.assert_allclose(decoded(maps[2]["z"]), 0.1)


def test_a_spectrum_file_adds_its_spectrum(dsurf, files, tmp_path):
    from distributed_surface.storage import read_spectrum

    rc, out, err = dsurf("report", "s2.h5", "h.h5", "--out", "r.html")
    assert rc == 0 and err == "", err
    page = (tmp_path / "r.html").read_text()
    spectrum = read_spectrum(str(files["h"]))
    (density,) = plot_data(page, "spectrum-1")
    np.testing.assert_array_equal(decoded(density["x"]), spectrum.density_grid)
    assert json.dumps(f"λmax {spectrum.eigenvalues[0]:.4g}")[1:-1] in page  # the plot's title (JSON in the page)
    assert "top eigenvalues: " + ", ".join(f"{v:.6g}" for v in spectrum.eigenvalues) in page  # dsurf info's text
    assert_one_line_error(*dsurf("compare", "s2.h5", "h.h5"), "h.h5", "Hessian spectrum file, not a surface")


def test_bad_input_gets_one_line(dsurf, files, tmp_path):
    assert_one_line_error(*dsurf("report", "s2.h5", "--out", "nowhere/r.html"), "--out", "does not exist")
    (tmp_path / "folder").mkdir()
    assert_one_line_error(*dsurf("report", "s2.h5", "--out", "folder"), "is a directory")
    (tmp_path / "mine.html").write_text("<html>my page</html>")
    assert_one_line_error(*dsurf("report", "s2.h5", "--out", "mine.html"), "dsurf report did not write it", "--force")
    assert (tmp_path / "mine.html").read_text() == "<html>my page</html>"
    rc, _, err = dsurf("report", "s2.h5", "--out", "mine.html", "--force")
    assert rc == 0 and err == ""
    assert_one_line_error(*dsurf("report", "missing.h5", "--out", "r.html"), "no such file")
    assert_one_line_error(*dsurf("report", "s2.h5", "--out", "s2.h5"), "exists and dsurf report did not write it")
    with h5py.File(files["s1"], "r+") as f:
        f["done"][...] = 0
    assert_one_line_error(*dsurf("report", "s1.h5", "--out", "r.html"), "no point is computed")
    assert not (tmp_path / "r.html").exists()


def test_without_plotly_one_line(dsurf, files, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "plotly", None)  # (import plotly then raises ImportError)
    assert_one_line_error(*dsurf("report", "s2.h5", "--out", "r.html"), "needs plotly")


def test_a_report_replaces_its_own_file(dsurf, files, tmp_path):
    assert dsurf("report", "s2.h5")[0] == 0
    first = tmp_path / "s2_report.html"
    assert first.is_file()
    rc, out, err = dsurf("report", "s2.h5")
    assert rc == 0 and err == "" and out.strip() == "s2_report.html"


# ---------------------------------------------------------------- in a real browser


def _browser():
    """A headless Chromium under selenium, offline: Debian's chromium and chromedriver, named by path
    (so Selenium Manager never downloads one)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"no browser: {', '.join(missing)} missing (the set-up installs Debian's chromium and chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (the set-up installs it)")
    os.environ["SE_OFFLINE"] = "true"  # never look for a driver on the network
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    return webdriver, Service(executable_path=str(CHROMEDRIVER)), options


@pytest.mark.browser
def test_the_report_in_headless_chromium(dsurf, files, tmp_path):
    webdriver, service, options = _browser()
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    rc, _, err = dsurf("report", "s2.h5", "--out", "r.html")
    assert rc == 0 and err == "", err
    profile = tmp_path / "profile"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1300,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.get((tmp_path / "r.html").as_uri())
        div = "surface-0-3d-train_loss"
        drawn = "const g = document.getElementById(arguments[0]); return !!(g && g._fullLayout && g.querySelector('canvas'))"
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(drawn, div))
        # the value the page holds at θ0: plotly's own data of the plot (rows are y)
        held = driver.execute_script(
            "const t = document.getElementById(arguments[0])._fullData[0];"
            "return {x: Array.from(t.x), y: Array.from(t.y), z: Array.from(t.z, row => Array.from(row))};", div)  # fmt: skip
        data = read_surface(str(files["s2"]))
        i, j = held["x"].index(0.0), held["y"].index(0.0)
        assert held["z"][j][i] == data.metrics["train_loss"][list(data.x).index(0.0), list(data.y).index(0.0)]
        element = driver.find_element("id", div)
        driver.execute_script("arguments[0].scrollIntoView()", element)
        shot = Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:", "blob:")) for url in fetched), fetched  # nothing from a network
    # the canvas drew the surface: a blank plot has a handful of colours, the shaded surface thousands
    width, height = shot.size
    plot_area = shot.crop((width // 5, height // 5, 4 * width // 5, 4 * height // 5))
    distinct = len(np.unique(np.asarray(plot_area).reshape(-1, 3), axis=0))
    assert distinct > 500, f"the 3D plot looks blank ({distinct} colours)"
