"""The MLflow UI and the plots page as a person sees them: the system Chromium, headless, driven by
Selenium against `mlflow server` on 127.0.0.1 over a small store (two word2vec runs that differ in one
param, a registered model with its champion). Screenshots: tests/browser.py's `screenshot_dir()`."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tasks import plots, tracking
from tasks.params import load_params
from tasks.progress import run_url
from tests.browser import chromium, page_text, require_chromium, save_screenshot, wait_for
from tests.conftest import BIN, REPO, copy_repo
from tests.servers import free_port, mlflow_server, stop_group, wait_for_health
from tests.test_plots import make_plots_repo

pytestmark = pytest.mark.integration
LRS = (0.001, 0.005)


def drawn_fraction(png: bytes) -> float:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return float((rgb.min(axis=2) < 200).mean())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two word2vec runs named as d2lflow names them (commit + the -S edit), their curves, and model
    word2vec version 1 as champion; served by `mlflow server`."""
    require_chromium()
    root = tmp_path_factory.mktemp("ui-store")
    for name in ("params.yaml", "dvc.yaml"):
        (root / name).write_text((REPO / name).read_text())
    params = load_params(root / "params.yaml")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = tracking.experiment_id("word2vec", params)
    runs = {}
    for lr in LRS:
        name = f"word2vec-c0ffee12-{tracking.overrides_label({'word2vec.train.lr': lr})}"
        with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
            mlflow.log_params(tracking.pipeline_params(params, "word2vec") | {"word2vec.train.lr": lr})
            for epoch in (1, 2, 3):
                tracking.log_metrics({"train_loss": 0.69 - 0.1 * epoch * lr * 300, "val_loss": 0.7 - 0.08 * epoch},
                                     step=epoch)
            tracking.log_metrics({"heldout_loss": 0.45 - lr, "analogy_total": 19544})
        runs[name] = run.info.run_id
    client = MlflowClient()
    client.create_registered_model("word2vec")
    first = next(iter(runs.values()))
    version = client.create_model_version("word2vec", source=f"runs:/{first}/word2vec", run_id=first)
    client.set_registered_model_alias("word2vec", tracking.CHAMPION, version.version)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    with mlflow_server(uri, root / "server") as server:
        yield {"url": server.url, "experiment": experiment, "runs": runs}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as session:
        yield session


def test_the_experiment_link_opens_on_the_runs_table_with_distinct_run_names(store: dict, browser) -> None:
    url = run_url(store["url"], store["experiment"])
    browser.get(url)
    names = list(store["runs"])

    def table() -> str | None:
        text = page_text(browser)
        return text if all(name in text for name in names) else None

    text = wait_for(browser, table, f"the run names {names}", "mlflow-experiment")
    save_screenshot(browser, "mlflow-experiment-runs")
    assert f"/experiments/{store['experiment']}/runs" in browser.current_url
    assert "2 matching runs" in text and "Token Usage" not in text  # the runs table, not the GenAI overview
    assert "d2lflow pipeline word2vec" in text  # the experiment's description


def test_the_compare_page_shows_the_param_that_differs(store: dict, browser) -> None:
    ids = ",".join(f'"{run_id}"' for run_id in store["runs"].values())
    browser.get(f"{store['url']}/#/compare-runs?runs=[{ids}]&experiments=[\"{store['experiment']}\"]")
    row = re.compile(r"word2vec\.train\.lr\s+0\.001\s+0\.005")
    wait_for(browser, lambda: row.search(page_text(browser)), "the row word2vec.train.lr 0.001 0.005",
             "mlflow-compare")
    cell = browser.find_elements("xpath", "//*[normalize-space(text())='word2vec.train.lr']")[-1]  # the table's
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    save_screenshot(browser, "mlflow-compare")
    text = page_text(browser)
    assert re.search(r"word2vec\.train\.epochs\s+5\s+5", text)  # a param both share, for contrast
    assert "val_loss" in text and "analogy_total" not in text.split("Metrics", 1)[1].split("Tags", 1)[0]


def test_the_registered_models_page_shows_the_champion_alias(store: dict, browser) -> None:
    browser.get(f"{store['url']}/#/models/word2vec")
    wait_for(browser, lambda: "champion" in page_text(browser), "the alias champion", "mlflow-model")
    save_screenshot(browser, "mlflow-model")
    assert re.search(r"Version 1[\s\S]*@\s*champion", page_text(browser))


def test_the_plots_page_draws_its_figures_offline_where_dvcs_page_is_blank(tmp_path: Path, browser) -> None:
    root = make_plots_repo(tmp_path / "repo")
    page = plots.write_page(root, root / "artifacts/plots/all")["page"]
    browser.get(Path(page).as_uri())  # no network: the browser's proxy refuses everything but loopback
    svgs = wait_for(browser, lambda: browser.find_elements("css selector", "figure svg"), "the figures", "plots")
    assert len(svgs) == 3
    for svg in svgs:
        assert svg.size["width"] > 200 and svg.size["height"] > 200
        assert len(svg.find_elements("css selector", "path")) > 5
    shot = save_screenshot(browser, "plots-offline")
    assert drawn_fraction(shot.read_bytes()) > 0.01

    # DVC's own page loads Vega from a CDN: offline it draws nothing (what `d2lflow plots` replaces)
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--out", str(tmp_path / "dvc_plots")], cwd=root,
                   check=True, capture_output=True)
    browser.get((tmp_path / "dvc_plots" / "index.html").as_uri())
    wait_for(browser, lambda: browser.execute_script("return document.readyState") == "complete", "DVC's page",
             "dvc-plots")
    save_screenshot(browser, "dvc-plots-offline")
    assert browser.find_elements("css selector", "svg, canvas") == []


@pytest.mark.slow
def test_the_prefect_flow_run_page_shows_the_stage_tasks(tmp_path: Path, browser) -> None:
    """A real `d2lflow run word2vec` (tiny synthetic corpus) reporting to `prefect server start`, whose
    UI then shows the flow run with one task per DVC stage."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = copy_repo(tmp_path / "repo", ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=2"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"{base}/api",
           "PYTHONPATH": str(root)}
    server_log = tmp_path / "server.log"
    server = None
    try:
        with server_log.open("w") as out:
            server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait_for_health(f"{base}/api/health", server, server_log)
        done = subprocess.run([str(BIN / "d2lflow"), "run", "word2vec"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"d2lflow run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        with temporary_settings({PREFECT_API_URL: f"{base}/api"}), get_client(sync_client=True) as client:
            (flow_run,) = client.read_flow_runs()
        browser.get(f"{base}/runs/flow-run/{flow_run.id}")
        stages = [f"dvc repro word2vec_{stage}" for stage in ("preprocess", "train", "evaluate", "register")]
        wait_for(browser, lambda: "Completed" in page_text(browser), "the flow run's state", "prefect-flow-run")
        save_screenshot(browser, "prefect-flow-run-graph")  # the graph is a canvas: its names are not in the DOM
        tab = wait_for(browser, lambda: browser.execute_script(  # the innermost element reading "Task Runs"
            "const found = [...document.querySelectorAll('*')].filter(e => e.innerText?.trim() === 'Task Runs');"
            "return found[found.length - 1];"), "the Task Runs tab", "prefect-flow-run")
        tab.click()  # the list of the run's task runs

        def tasks_shown() -> bool:
            text = page_text(browser)
            return all(any(line.startswith(stage) for line in text.splitlines()) for stage in stages)

        wait_for(browser, tasks_shown, f"the tasks {stages}", "prefect-flow-run")
        save_screenshot(browser, "prefect-flow-run")
        assert flow_run.name in page_text(browser) and "Completed" in page_text(browser)
    finally:
        stop_group(server)
