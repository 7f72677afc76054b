"""`d2lflow new NAME`: scaffold a pipeline on the kit (tasks/kit.py) that runs end to end on synthetic data.

It writes tasks/NAME/{__init__,stages,serving,synthetic}.py and tests/test_NAME.py, and adds NAME to the
three places a pipeline is registered: its params section in tasks/params.py (the `Pipeline` names, the
section classes, the `Params` field: everything else, the CLIs included, reads `Pipeline`), its section in
params.yaml and its four stages in dvc.yaml. All or nothing: everything is checked before the first
write, and should a write or the final check (the new params load) fail, every file written is removed
and every file edited is put back.
"""

from __future__ import annotations

import ast
import keyword
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.atomic import write_text
from tasks.errors import D2lflowError

TEMPLATES = Path(__file__).with_name("scaffold_template")
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
SECTIONS_MARK = "# d2lflow new: the sections of new pipelines go above this line\n"
FIELDS_MARK = "    # d2lflow new: the fields of new pipelines go above this line\n"
PIPELINE_LINE = re.compile(r"^Pipeline = Literal\[(?P<names>[^\]]*)\]$", re.MULTILINE)

PARAMS_YAML = """
# `d2lflow new {name}`: a softmax-regression classifier on synthetic clusters (tasks/{name}/).
{name}:
  data:
    source: synthetic   # local (local_path: a folder or archive holding train.csv) | synthetic (offline)
    url: ''
    sha1: ''
    local_path: null
    dir: data/{name}
    synthetic:
      examples: 2000
      features: 8
      classes: 3
      noise: 2.0
      seed: 0
  preprocess:
    val_fraction: 0.2
    out_dir: artifacts/{name}/preprocess
  train:
    hidden: 32
    lr: 0.1
    batch_size: 64
    epochs: 5
    out_dir: artifacts/{name}/train
    checkpoint_dir: checkpoints/{name}
  evaluate:
    out_dir: artifacts/{name}/evaluate
  register:
    model_name: {name}
    primary_metric: accuracy
    greater_is_better: true
    out_dir: artifacts/{name}/register
"""

DVC_STAGES = """
  {name}_preprocess:
    cmd: python -m tasks {name} preprocess
    deps:
      - data/{name}
{code}
    params:
      - seed
      - {name}.preprocess
    outs:
      - artifacts/{name}/preprocess

  {name}_train:
    cmd: python -m tasks {name} train
    deps:
      - artifacts/{name}/preprocess
{code}
    params:
      - seed
      - device
      - distributed.nproc_per_node
      - distributed.nnodes
      - {name}.data.synthetic.classes
      - {name}.preprocess
      - {name}.train
    outs:
      - artifacts/{name}/train/model.pt
      - artifacts/{name}/train/run.json
      - artifacts/{name}/train/validation.csv
    metrics:
      - artifacts/{name}/train/metrics.json
    plots:
      - artifacts/{name}/train/history.csv:
          x: epoch
          y: loss
          title: {name} training loss per epoch

  {name}_evaluate:
    cmd: python -m tasks {name} evaluate
    deps:
      - artifacts/{name}/preprocess
      - artifacts/{name}/train/model.pt
      - artifacts/{name}/train/run.json
{code}
    params:
      - {name}.evaluate
    metrics:
      - artifacts/{name}/evaluate/metrics.json

  {name}_register:
    cmd: python -m tasks {name} register
    always_changed: true   # registers in the MLflow store configured now; idempotent
    deps:
      - artifacts/{name}/train/model.pt
      - artifacts/{name}/train/run.json
      - artifacts/{name}/evaluate/metrics.json
{code}
    params:
      - {name}.register
"""


def _render(template: str, name: str) -> str:
    return (TEMPLATES / template).read_text().format(name=name, Title=name.title().replace("_", ""))


def _existing_pipelines(params_source: str) -> list[str]:
    match = PIPELINE_LINE.search(params_source)
    if match is None:
        raise D2lflowError("tasks/params.py: no `Pipeline = Literal[...]` line to add the pipeline to; "
                           "restore it from git")
    return [ast.literal_eval(part.strip()) for part in match["names"].split(",") if part.strip()]


def check_name(root: Path, name: str) -> None:
    """Refuse a name that is not a lower-case identifier or that a pipeline, module or file already uses."""
    if not NAME.fullmatch(name) or keyword.iskeyword(name):
        raise D2lflowError(f"pipeline name {name!r} is not valid: use a lower-case Python identifier of at most "
                           "40 characters (a-z, 0-9, _; starting with a letter), e.g. `d2lflow new lenet`")
    params_py = (root / "tasks" / "params.py").read_text()
    if name in _existing_pipelines(params_py):
        raise D2lflowError(f"pipeline {name!r} exists already (tasks/params.py `Pipeline`); choose another name")
    taken = [path for path in (root / "tasks" / name, root / "tasks" / f"{name}.py", root / "tests" / f"test_{name}.py")
             if path.exists()]
    if taken:
        raise D2lflowError(f"{taken[0]} exists already; choose another pipeline name")
    if re.search(rf"^{re.escape(name)}:", (root / "params.yaml").read_text(), re.MULTILINE):
        raise D2lflowError(f"{root / 'params.yaml'} has a top-level key {name!r} already; choose another name")
    if re.search(rf"^  {re.escape(name)}_\w+:", (root / "dvc.yaml").read_text(), re.MULTILINE):
        raise D2lflowError(f"{root / 'dvc.yaml'} has stages {name}_* already; choose another name")
    for mark, label in ((SECTIONS_MARK, "sections"), (FIELDS_MARK, "Params fields")):
        if params_py.count(mark) != 1:
            raise D2lflowError(f"tasks/params.py: the marker line for new pipeline {label} ({mark.strip()!r}) "
                               "is missing or repeated; restore it from git")


def _module_file(root: Path, module: str, new: dict[Path, str]) -> Path | None:
    if module.split(".")[0] not in ("tasks", "models"):
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate in new or candidate.is_file():
            return candidate
    return None


def code_deps(root: Path, start: str, new: dict[Path, str]) -> list[str]:
    """Every project file (tasks/, models/) that module `start` imports, at any depth: a stage's code deps."""
    files: set[Path] = set()
    todo = [start]
    while todo:
        path = _module_file(root, todo.pop(), new)
        if path is None or path in files:
            continue
        files.add(path)
        package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(new.get(path) or path.read_text())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                todo += [base] + [f"{base}.{alias.name}" for alias in node.names]
    text = {path: new.get(path) or path.read_text() for path in files}
    return sorted(str(path.relative_to(root)) for path in files
                  if path.name != "__init__.py" or text[path].strip())


def plan(root: Path, name: str) -> tuple[dict[Path, str], dict[Path, str]]:
    """(new files, edited files): path → full text, all computed before anything is written."""
    check_name(root, name)
    package = root / "tasks" / name
    new = {package / "__init__.py": "",
           package / "stages.py": _render("stages.py.tmpl", name),
           package / "serving.py": _render("serving.py.tmpl", name),
           package / "synthetic.py": _render("synthetic.py.tmpl", name),
           root / "tests" / f"test_{name}.py": _render("test.py.tmpl", name)}
    params_py = (root / "tasks" / "params.py").read_text()
    names = _existing_pipelines(params_py) + [name]
    params_py = PIPELINE_LINE.sub(f"Pipeline = Literal[{', '.join(repr(n) for n in names)}]".replace("'", '"'),
                                  params_py, count=1)
    params_py = params_py.replace(SECTIONS_MARK, _render("params.py.tmpl", name) + SECTIONS_MARK)
    title = name.title().replace("_", "")
    params_py = params_py.replace(FIELDS_MARK, f"    {name}: {title}Params = {title}Params()\n" + FIELDS_MARK)
    deps = code_deps(root, f"tasks.{name}.stages", {**new, root / "tasks" / "params.py": params_py})
    code = "\n".join(f"      - {dep}" for dep in deps)
    dvc_yaml = (root / "dvc.yaml").read_text()
    params_yaml = (root / "params.yaml").read_text()
    edited = {root / "tasks" / "params.py": params_py,
              root / "params.yaml": params_yaml.rstrip("\n") + "\n" + PARAMS_YAML.format(name=name),
              root / "dvc.yaml": dvc_yaml.rstrip("\n") + "\n" + DVC_STAGES.format(name=name, code=code)}
    return new, edited


def _check_params(root: Path) -> None:
    """The edited params.yaml must load with the edited tasks/params.py (in a fresh interpreter)."""
    done = subprocess.run([sys.executable, "-c", "import sys; from tasks.params import load_params; "
                           "load_params(sys.argv[1])", str(root / "params.yaml")],
                          cwd=root, capture_output=True, text=True, env=_env(root), timeout=120)
    if done.returncode != 0:
        raise D2lflowError(f"the scaffolded params do not load ({done.stderr.strip().splitlines()[-1:]}); "
                           "nothing was changed")


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def new(root: Path, name: str) -> dict[str, Any]:
    """Scaffold pipeline `name` in the repository at `root` (see the module docstring)."""
    root = root.resolve()
    for required in ("tasks/params.py", "params.yaml", "dvc.yaml"):
        if not (root / required).is_file():
            raise D2lflowError(f"{root / required}: missing; run `d2lflow new` in the repository root (or --root)")
    files, edits = plan(root, name)
    originals = {path: path.read_text() for path in edits}
    written: list[Path] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
            written.append(path)
        for path, text in edits.items():
            write_text(path, text)
            written.append(path)
        _check_params(root)
    except BaseException:
        for path in reversed(written):
            if path in originals:
                write_text(path, originals[path])
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(root / "tasks" / name, ignore_errors=True)  # check_name made sure it was not there
        raise
    return {"pipeline": name, "created": sorted(str(p.relative_to(root)) for p in files),
            "edited": sorted(str(p.relative_to(root)) for p in edits),
            "next": f"d2lflow acquire && dvc repro {name}_register  (or python -m tasks {name} STAGE)"}
