"""Load a registered model without running anything from the artifact store.

`load("word2vec@champion")` reads the model version's tags (pipeline, file names, sha256 per
file), downloads only those files (the weights and the JSON config or vocabulary, never
`python_model.pkl` or `code/`), refuses any whose sha256 differs from the tag, and builds the model
with the installed d2lflow code: the same serving class the pyfunc uses, given the verified files,
weights through `torch.load(weights_only=True)`. The registry's tags are the trust anchor: someone
who can rewrite them can substitute other weights (data, never code); someone who can only write
the artifact store is refused.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.errors import D2lflowError

TAG = "d2lflow."
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def _serving_class(pipeline: str):
    """The installed serving class of each pipeline and the artifact keys it reads."""
    if pipeline == "word2vec":
        from tasks.word2vec.serving import Word2vecEmbeddings
        return Word2vecEmbeddings, ("weights", "vocab")
    if pipeline == "segmentation":
        from tasks.segmentation.serving import FcnSegmenter
        return FcnSegmenter, ("weights", "config")
    if pipeline == "detection":
        from tasks.detection.serving import FasterRcnnDetector
        return FasterRcnnDetector, ("weights", "config")
    if pipeline == "classification":
        from tasks.classification.serving import LenetClassifier
        return LenetClassifier, ("weights", "config")
    if pipeline == "generative":
        from tasks.generative.serving import GenerativeSampler
        return GenerativeSampler, ("weights", "config")
    if pipeline == "style":
        from tasks.style.serving import StyleTransformer
        return StyleTransformer, ("weights", "config")
    raise D2lflowError(f"the model version's tag {TAG}pipeline is {pipeline!r}; this d2lflow loads "
                       "word2vec, segmentation, detection, classification, style and generative models")


@dataclass
class LoadedModel:
    """A registered model built from the installed code; `predict` takes what the pyfunc takes."""

    name: str
    version: int
    pipeline: str
    model: Any  # the serving class instance (its `.model` / `.embeddings` hold the network or vectors)
    sha256: dict[str, str] = field(default_factory=dict)

    def predict(self, model_input: Any) -> Any:
        return self.model.predict(None, model_input)


def _version(client: MlflowClient, spec: str):
    name, at, ref = spec.partition("@")
    if not (name and at and ref):
        raise D2lflowError(f"{spec!r}: expected MODEL@ALIAS or MODEL@VERSION, e.g. word2vec@champion or fcn-voc@3")
    try:
        return client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException as error:
        raise D2lflowError(f"model {spec!r} not found in {mlflow.get_registry_uri()} "
                           f"({error.message.splitlines()[0]}); check MLFLOW_TRACKING_URI") from None


def _verified_copy(root_uri: str, key: str, name: str, expected: str, into: Path, label: str) -> Path:
    """Download one file of the model, check its sha256 against the version's tag, and keep the
    checked bytes in a private folder (the loader reads that copy, not the store's file)."""
    if not SAFE_NAME.fullmatch(name):
        raise D2lflowError(f"{label}: tag {TAG}file.{key} is {name!r}, not a plain file name; refusing it")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{root_uri}/artifacts/{name}", dst_path=scratch)
        except (MlflowException, OSError) as error:
            raise D2lflowError(f"{label}: cannot download artifacts/{name} from {root_uri}: {error}") from None
        data = Path(local).read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != expected:
        raise D2lflowError(f"{label}: artifacts/{name} has sha256 {found}, but the version records {expected}; "
                           "the artifact store was changed after registration: refusing to load it")
    target = into / key / name
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    return target


def load(spec: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> LoadedModel:
    """The model `MODEL@ALIAS` or `MODEL@VERSION` from the registry (`tracking_uri`, else MLflow's
    current one, e.g. MLFLOW_TRACKING_URI), built from installed code and hash-checked files only."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    version = _version(client, spec)
    label = f"model {version.name} version {version.version}"
    tags = version.tags
    pipeline = tags.get(f"{TAG}pipeline") or _pipeline_of_run(client, version)
    cls, keys = _serving_class(pipeline)
    missing = [key for key in keys if not tags.get(f"{TAG}file.{key}") or not tags.get(f"{TAG}sha256.{key}")]
    if missing:
        raise D2lflowError(f"{label} has no {TAG}file/sha256 tags for {', '.join(missing)} (registered by an older "
                           "d2lflow?); register it again with `dvc repro` to load it safely")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    root_uri = client.get_model_version_download_uri(version.name, version.version).rstrip("/")
    model = cls()
    with tempfile.TemporaryDirectory(prefix="d2lflow-model-") as folder:
        paths = {key: str(_verified_copy(root_uri, key, tags[f"{TAG}file.{key}"], tags[f"{TAG}sha256.{key}"],
                                         Path(folder), label)) for key in keys}
        model.load_context(SimpleNamespace(artifacts=paths))
    return LoadedModel(version.name, int(version.version), pipeline, model,
                       {key: tags[f"{TAG}sha256.{key}"] for key in keys})


def _pipeline_of_run(client: MlflowClient, version) -> str:
    try:
        return client.get_run(version.run_id).data.tags.get(f"{TAG}pipeline", "") if version.run_id else ""
    except MlflowException:
        return ""
