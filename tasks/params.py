"""params.yaml, typed and validated on load: a wrong key, type or value is an error naming the key.

Every hyperparameter, path and seed lives in params.yaml; code reads it only through `load_params`.
Relative paths in params are relative to the directory of the params file (the repository root).
"""

from __future__ import annotations

import datetime
import warnings
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tasks.atomic import write_text
from tasks.errors import ParamsError

DEFAULT_PARAMS = Path("params.yaml")
Pipeline = Literal["word2vec", "segmentation", "detection", "classification", "style", "generative"]


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowParams(Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    registry_uri: str | None = None
    system_metrics: bool = True


class DistributedParams(Section):
    """Multi-process training through torchrun (DDP). World size 1 is the plain single-process run;
    above 1 the train stage re-launches itself under `python -m torch.distributed.run`."""

    nproc_per_node: int = Field(1, ge=1)  # processes on this node (one per GPU on CUDA)
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)  # this node's rank, 0..nnodes-1 (set per node)
    master_addr: str = "127.0.0.1"  # rank 0's host, reachable from every node
    master_port: int | None = Field(None, ge=1, le=65535)  # null: a free port (single node only)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU

    @model_validator(mode="after")
    def _node_rank_below_nnodes(self) -> DistributedParams:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank must be below nnodes ({self.nnodes}); found {self.node_rank}")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class DataSourceParams(Section):
    """Where a pipeline's raw data comes from; each pipeline's section sets its own defaults."""

    source: Literal["d2l", "local", "synthetic"] = "synthetic"
    url: str  # the book's mirror (source d2l)
    sha1: str  # of the archive at `url`
    local_path: str | None = None  # a directory or archive the user already has (source local)
    dir: str  # where the dataset is installed under data/


class SyntheticPtbParams(Section):
    sentences: int = Field(12000, ge=10)
    groups: int = Field(12, ge=2)
    words_per_group: int = Field(8, ge=2)
    seed: int = 0


class Word2vecDataParams(DataSourceParams):
    url: str = "http://d2l-data.s3-accelerate.amazonaws.com/ptb.zip"
    sha1: str = "319d85e578af0cdc590547f26231e4e31cdf1e42"
    dir: str = "data/ptb"
    eval_dir: str = "data/word2vec_eval"
    synthetic: SyntheticPtbParams = SyntheticPtbParams()


class Word2vecPreprocessParams(Section):
    min_freq: int = Field(10, ge=1)
    subsample: bool = True
    subsample_t: float = Field(1e-4, gt=0)
    max_window_size: int = Field(5, ge=1)
    num_noise_words: int = Field(5, ge=1)
    out_dir: str = "artifacts/word2vec/preprocess"


class Word2vecTrainParams(Section):
    embed_size: int = Field(100, ge=1)
    lr: float = Field(0.002, gt=0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(512, ge=1)
    resample_every_epoch: bool = False
    # adam: the book's dense Adam over both tables; sparse_adam: the same dense Adam computed on the
    # rows a batch touches (closed-form gradient; skipped rows caught up in closed form).
    optimizer: Literal["adam", "sparse_adam"] = "adam"
    out_dir: str = "artifacts/word2vec/train"
    checkpoint_dir: str = "checkpoints/word2vec"


class Word2vecEvaluateParams(Section):
    probe_words: list[str] = ["chip", "baby", "beautiful"]
    k: int = Field(3, ge=1)
    wordsim353: str = "data/word2vec_eval/wordsim353.tsv"
    simlex999: str = "data/word2vec_eval/simlex999.txt"
    analogies: str = "data/word2vec_eval/questions-words.txt"
    out_dir: str = "artifacts/word2vec/evaluate"


class RegisterParams(Section):
    model_name: str
    primary_metric: str
    greater_is_better: bool
    out_dir: str


# A section named "register" shadows ABCMeta.register on the class; instances read the field.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Word2vecParams(Section):
    data: Word2vecDataParams = Word2vecDataParams()
    preprocess: Word2vecPreprocessParams = Word2vecPreprocessParams()
    train: Word2vecTrainParams = Word2vecTrainParams()
    evaluate: Word2vecEvaluateParams = Word2vecEvaluateParams()
    register: RegisterParams = RegisterParams(
        model_name="word2vec",
        primary_metric="heldout_loss",
        greater_is_better=False,
        out_dir="artifacts/word2vec/register",
    )


class SyntheticVocParams(Section):
    train_images: int = Field(40, ge=1)
    val_images: int = Field(16, ge=1)
    image_size: tuple[int, int] = (360, 500)  # (height, width) of the usual image; sizes vary around it
    small_fraction: float = Field(0.15, ge=0, le=1)  # images smaller than the crop (dropped by the filter)
    max_objects: int = Field(3, ge=1)
    seed: int = 0


class SegmentationDataParams(DataSourceParams):
    url: str = "http://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar"
    sha1: str = "4e443f8a2eca6b1dac8a6c57641b67dd40621a49"
    dir: str = "data/VOCdevkit"
    synthetic: SyntheticVocParams = SyntheticVocParams()


class SegmentationPreprocessParams(Section):
    crop_size: tuple[int, int] = (320, 480)  # (height, width); multiples of 32 keep FCN output = input
    on_bad_sample: Literal["error", "skip"] = "error"
    out_dir: str = "artifacts/segmentation/preprocess"

    @field_validator("crop_size")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(side <= 0 or side % 32 for side in value):
            raise ValueError("both sides must be positive multiples of 32 (the FCN's stride)")
        return value


class SegmentationTrainParams(Section):
    backbone_weights: Literal["imagenet", "none"] = "none"
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(5, ge=1)
    eval_every: int = Field(1, ge=1)  # validation mIoU / pixel accuracy every N epochs (and after the last)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool = False
    amp: bool = False  # mixed precision, CUDA only: bf16 where supported (no GradScaler), else fp16
    channels_last: bool = True  # NHWC weights and batches, CUDA only (CPU keeps NCHW)
    torch_compile: bool = False  # the forward through torch.compile
    sync_batchnorm: bool = False  # under DDP: BatchNorm statistics over the global batch (CUDA only)
    out_dir: str = "artifacts/segmentation/train"
    checkpoint_dir: str = "checkpoints/segmentation"


class SegmentationEvaluateParams(Section):
    modes: list[Literal["center_crop", "tiled"]] = ["center_crop", "tiled"]
    tile_overlap: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(8, ge=1)
    figure_images: int = Field(4, ge=0)
    out_dir: str = "artifacts/segmentation/evaluate"


class SegmentationParams(Section):
    data: SegmentationDataParams = SegmentationDataParams()
    preprocess: SegmentationPreprocessParams = SegmentationPreprocessParams()
    train: SegmentationTrainParams = SegmentationTrainParams()
    evaluate: SegmentationEvaluateParams = SegmentationEvaluateParams()
    register: RegisterParams = RegisterParams(
        model_name="fcn-voc",
        primary_metric="mean_iou",
        greater_is_better=True,
        out_dir="artifacts/segmentation/register",
    )


class DetectionPreprocessParams(Section):
    data_dir: str = "data/VOCdevkit"  # the VOC tree the segmentation acquisition installs (same tar)
    on_bad_sample: Literal["error", "skip"] = "error"
    out_dir: str = "artifacts/detection/preprocess"


class DetectionTrainParams(Section):
    backbone: Literal["mobilenet_v3_large_320_fpn", "resnet50_fpn"] = "mobilenet_v3_large_320_fpn"
    weights: Literal["none", "imagenet", "coco"] = "none"
    box_batch_size_per_image: int = Field(128, ge=1)  # RoIs sampled per image (torchvision: 512)
    min_size: int = Field(320, ge=32)  # the model's internal resize (shorter side)
    max_size: int = Field(640, ge=32)
    # RPN proposals kept before / after NMS per image in training (torchvision: 2000 / 2000); images with a
    # few objects need far fewer, and fewer make the proposal NMS and sampling of a CPU step cheaper.
    rpn_pre_nms_top_n_train: int = Field(2000, ge=1)
    rpn_post_nms_top_n_train: int = Field(2000, ge=1)
    flip_prob: float = Field(0.5, ge=0, le=1)
    crop_size: tuple[int, int] | None = None  # random (height, width) crop before the resize, or none
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(100, ge=0)  # linear warm-up from lr/1000, as torchvision's reference
    clip_grad_norm: float | None = Field(10.0, gt=0)
    epochs: int = Field(10, ge=1)
    eval_every: int = Field(4, ge=1)  # validation mAP@0.5 every N epochs (and after the last)
    batch_size: int = Field(4, ge=1)
    num_workers: int = Field(0, ge=0)
    amp: bool = False  # mixed precision, CUDA only: bf16 where supported (no GradScaler), else fp16
    channels_last: bool = True  # NHWC weights and images, CUDA only (CPU keeps NCHW)
    torch_compile: bool = False  # the model through torch.compile
    out_dir: str = "artifacts/detection/train"
    checkpoint_dir: str = "checkpoints/detection"


class DetectionEvaluateParams(Section):
    score_thresh: float = Field(0.05, ge=0, le=1)
    nms_thresh: float = Field(0.5, gt=0, le=1)
    detections_per_image: int = Field(100, ge=1)
    batch_size: int = Field(1, ge=1)  # >1 pads a batch's images to one size: predictions depend on the batch
    figure_images: int = Field(4, ge=0)
    figure_score_thresh: float = Field(0.3, ge=0, le=1)  # boxes drawn on the MLflow figure
    out_dir: str = "artifacts/detection/evaluate"


class DetectionParams(Section):
    preprocess: DetectionPreprocessParams = DetectionPreprocessParams()
    train: DetectionTrainParams = DetectionTrainParams()
    evaluate: DetectionEvaluateParams = DetectionEvaluateParams()
    register: RegisterParams = RegisterParams(
        model_name="fasterrcnn-voc",
        primary_metric="map_50",
        greater_is_better=True,
        out_dir="artifacts/detection/register",
    )


class SyntheticFashionMnistParams(Section):
    train_images: int = Field(6000, ge=10)
    test_images: int = Field(1000, ge=10)
    noise: float = Field(0.1, ge=0)  # std of the Gaussian pixel noise on the [0, 1] scale
    seed: int = 0


class ClassificationDataParams(Section):
    """Fashion-MNIST's four IDX `.gz` files: downloaded from `url` (MD5-checked), copied from
    `local_path` (a folder with the four files, `.gz` or raw IDX), or generated."""

    source: Literal["download", "local", "synthetic"] = "synthetic"
    url: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # + the official file names
    md5: dict[str, str] = {  # official file name -> its published MD5 (= tasks.classification.idx.OFFICIAL_MD5)
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    local_path: str | None = None
    dir: str = "data/fashion-mnist"
    synthetic: SyntheticFashionMnistParams = SyntheticFashionMnistParams()


class ClassificationPreprocessParams(Section):
    val_fraction: float = Field(0.1, ge=0, lt=1)  # of the training file, held out by `seed`
    out_dir: str = "artifacts/classification/preprocess"


class ClassificationTrainParams(Section):
    variant: Literal["sigmoid", "relu"] = "sigmoid"  # the book's LeNet (7.6) | ReLU + max pooling
    lr: float = Field(0.1, gt=0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    num_workers: int = Field(0, ge=0)
    out_dir: str = "artifacts/classification/train"
    checkpoint_dir: str = "checkpoints/classification"


class ClassificationEvaluateParams(Section):
    batch_size: int = Field(1024, ge=1)
    figure_images: int = Field(16, ge=0)  # misclassified test images drawn in the MLflow figure
    out_dir: str = "artifacts/classification/evaluate"


class ClassificationParams(Section):
    data: ClassificationDataParams = ClassificationDataParams()
    preprocess: ClassificationPreprocessParams = ClassificationPreprocessParams()
    train: ClassificationTrainParams = ClassificationTrainParams()
    evaluate: ClassificationEvaluateParams = ClassificationEvaluateParams()
    register: RegisterParams = RegisterParams(
        model_name="lenet-fashion-mnist",
        primary_metric="accuracy",
        greater_is_better=True,
        out_dir="artifacts/classification/register",
    )

class GenerativeDataParams(Section):
    """The classification pipeline's outputs the generative pipeline reads (DVC deps; never copied)."""

    preprocess_dir: str = "artifacts/classification/preprocess"  # train.npz / test.npz (uint8 images, labels)
    classifier: str = "artifacts/classification/train/model.pt"  # LeNet state_dict (classification.train.variant)


class VaeTrainParams(Section):
    latent_dim: int = Field(16, ge=1)
    base: int = Field(32, ge=1)  # channels of the first conv (the second has twice as many)
    lr: float = Field(1e-3, gt=0)  # Adam
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    out_dir: str = "artifacts/generative/train_vae"
    checkpoint_dir: str = "checkpoints/generative/vae"


class DcganTrainParams(Section):
    """The book's DCGAN (d2l 20.2): Adam lr 0.005, beta1 0.5, latent 100; image_size 32 pads the 28x28 images."""

    image_size: Literal[28, 32] = 28
    latent_dim: int = Field(100, ge=1)
    base: int = Field(64, ge=1)  # the book's n_G = n_D = 64
    lr: float = Field(0.005, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    out_dir: str = "artifacts/generative/train_dcgan"
    checkpoint_dir: str = "checkpoints/generative/dcgan"


class GenerativeEvaluateParams(Section):
    samples: int = Field(10000, ge=8)  # per model and baseline (the coverage histogram's 10k)
    batch_size: int = Field(500, ge=1)
    k: int = Field(3, ge=1)  # neighbours of the precision/recall manifolds
    grid_images: int = Field(64, ge=1)
    interpolation_steps: int = Field(10, ge=2)
    out_dir: str = "artifacts/generative/evaluate"


class GenerativeRegisterParams(Section):
    vae: RegisterParams = RegisterParams(model_name="vae-fashion-mnist", primary_metric="fid_lenet",
                                         greater_is_better=False, out_dir="artifacts/generative/register/vae")
    dcgan: RegisterParams = RegisterParams(model_name="dcgan-fashion-mnist", primary_metric="fid_lenet",
                                           greater_is_better=False, out_dir="artifacts/generative/register/dcgan")


class GenerativeParams(Section):
    data: GenerativeDataParams = GenerativeDataParams()
    train_vae: VaeTrainParams = VaeTrainParams()
    train_dcgan: DcganTrainParams = DcganTrainParams()
    evaluate: GenerativeEvaluateParams = GenerativeEvaluateParams()
    register: GenerativeRegisterParams = GenerativeRegisterParams()


class StyleBookImageParams(Section):
    """One of the book's images in its published `img/` folder (source d2l)."""

    name: str
    sha1: str


class SyntheticStyleParams(Section):
    image_size: tuple[int, int] = (300, 450)  # (height, width) of the synthetic content and style images
    seed: int = 0


class StyleContentSetParams(Section):
    """The content images the feed-forward style network trains on (and is evaluated on, held out)."""

    source: Literal["local", "synthetic"] = "synthetic"
    # a folder or a tar/zip of JPEG/PNG images; a VOC tree (a folder holding JPEGImages/) gives its JPEGImages
    local_path: str | None = None
    images: int = Field(12, ge=2)  # synthetic images (source synthetic)
    image_size: tuple[int, int] = (160, 224)  # (height, width) of the synthetic images
    seed: int = 0


class StyleDataParams(Section):
    source: Literal["d2l", "local", "synthetic"] = "synthetic"
    base_url: str = "https://raw.githubusercontent.com/d2l-ai/d2l-en/master/img/"  # the book's img/ folder
    content: StyleBookImageParams = StyleBookImageParams(name="rainier.jpg",
                                                         sha1="b0193ffd8ecea1631ac1092130017b884faafa30")
    style: StyleBookImageParams = StyleBookImageParams(name="autumn-oak.jpg",
                                                       sha1="bbe11f01403b9726bbc625589550e574fc45980a")
    content_path: str | None = None  # source local: an image file
    style_path: str | None = None  # source local: an image file
    synthetic: SyntheticStyleParams = SyntheticStyleParams()
    content_set: StyleContentSetParams = StyleContentSetParams()
    dir: str = "data/style"


class StylePreprocessParams(Section):
    image_shape: tuple[int, int] = (300, 450)  # (height, width) the book resizes both images to
    content_set_shape: tuple[int, int] = (128, 192)  # (height, width) of the feed-forward network's images
    heldout_images: int = Field(2, ge=1)  # the last N content-set images (sorted names), never trained on
    out_dir: str = "artifacts/style/preprocess"

    @field_validator("image_shape", "content_set_shape")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(side < 16 for side in value):
            raise ValueError("both sides must be at least 16 pixels (VGG-19 pools four times before layer 28)")
        return value


class StyleLossWeights(Section):
    content: float = Field(1.0, ge=0)
    style: float = Field(1e4, ge=0)
    tv: float = Field(10.0, ge=0)


class StyleFeedForwardParams(Section):
    """Johnson et al. (2016): a TransformNet trained on the content set with the same perceptual loss."""

    base: int = Field(32, ge=1)  # widths base, 2·base, 4·base (the paper: 32)
    n_residual: int = Field(5, ge=0)  # residual blocks (the paper: 5)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    log_every: int = Field(10, ge=1)  # steps between logged losses (and after the last)


class StyleTrainParams(Section):
    features: Literal["random", "imagenet"] = "random"  # imagenet: torchvision's vgg19-dcbb9e9d.pth
    lr: float = Field(0.3, gt=0)
    epochs: int = Field(500, ge=1)
    lr_decay_epoch: int = Field(50, ge=1)  # StepLR step
    lr_decay: float = Field(0.8, gt=0, le=1)  # StepLR gamma
    weights: StyleLossWeights = StyleLossWeights()
    log_image_every: int = Field(50, ge=1)  # the evolving image to MLflow every N epochs (and the last)
    feedforward: StyleFeedForwardParams = StyleFeedForwardParams()
    out_dir: str = "artifacts/style/train"


class StyleEvaluateParams(Section):
    optimise_epochs: int = Field(100, ge=1)  # per-image optimisation of each held-out image (the comparison)
    out_dir: str = "artifacts/style/evaluate"


class StyleParams(Section):
    data: StyleDataParams = StyleDataParams()
    preprocess: StylePreprocessParams = StylePreprocessParams()
    train: StyleTrainParams = StyleTrainParams()
    evaluate: StyleEvaluateParams = StyleEvaluateParams()
    register: RegisterParams = RegisterParams(
        model_name="style-{style}",  # {style}: the style image's name (autumn-oak, synthetic, a local file's stem)
        primary_metric="feedforward_total_loss",
        greater_is_better=False,
        out_dir="artifacts/style/register",
    )


# d2lflow new: the sections of new pipelines go above this line


class ToleranceParams(Section):
    """A reproduced metric matches when |reproduced - recorded| <= atol + rtol * |recorded|."""

    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)


class ReproduceParams(Section):
    """How `python -m flows.reproduce` judges a rebuilt model against the recorded one."""

    cpu: ToleranceParams = ToleranceParams(atol=0.0, rtol=0.0)  # deterministic kernels: exact
    cuda: ToleranceParams = ToleranceParams(atol=1e-4, rtol=1e-3)  # atomics in some CUDA backward kernels
    speed_metrics: list[str] = ["*_per_s", "*seconds*"]  # fnmatch patterns: listed, never compared
    volatile_outputs: list[str] = ["*/run.json"]  # outputs whose bytes differ by design (an MLflow run id)


class DvcParams(Section):
    """How our DVC commands share a repository with each other and with a manual `dvc` run."""

    # How long a DVC command of ours waits for the repository: first for d2lflow's own lock (another
    # flow run or `d2lflow run`), then for DVC's lock (a manual `dvc repro`); then it fails clearly.
    lock_timeout_seconds: float = Field(1800, ge=0)


class ScheduleParams(Section):
    """Scheduled retraining (flows/retrain.py, flows/serve.py, prefect.yaml)."""

    cron: str = "0 3 * * *"  # five fields: minute hour day-of-month month day-of-week
    timezone: str = "UTC"  # IANA name the cron is read in
    pipelines: list[Pipeline] = Field(["word2vec"], min_length=1)
    data: Literal["acquire", "pull"] = "acquire"  # acquire from each *.data.source, or `dvc pull` from the remote

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError

        fields = value.split()
        if len(fields) != 5:
            raise ValueError(f"expected five cron fields (minute hour day-of-month month day-of-week), "
                             f"found {len(fields)}")
        try:
            CronSim(value, datetime.datetime(2000, 1, 1))
        except CronSimError as error:
            raise ValueError(f"not a valid cron expression: {error}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name (e.g. UTC, Europe/Berlin)") from None
        return value


class Params(Section):
    seed: int = 0
    device: str = "auto"
    _root: Path | None = PrivateAttr(None)
    _source: Path | None = PrivateAttr(None)
    mlflow: MlflowParams = MlflowParams()
    distributed: DistributedParams = DistributedParams()
    word2vec: Word2vecParams = Word2vecParams()
    segmentation: SegmentationParams = SegmentationParams()
    detection: DetectionParams = DetectionParams()
    classification: ClassificationParams = ClassificationParams()
    style: StyleParams = StyleParams()
    generative: GenerativeParams = GenerativeParams()
    # d2lflow new: the fields of new pipelines go above this line
    reproduce: ReproduceParams = ReproduceParams()
    dvc: DvcParams = DvcParams()
    schedule: ScheduleParams = ScheduleParams()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def root(self) -> Path:
        """The directory relative paths in params are resolved against (set by `load_params`)."""
        return self._root or Path.cwd()

    def source(self) -> Path:
        """The params file these params were read from (a re-launched process reads the same one)."""
        return self._source or self.root() / DEFAULT_PARAMS

    def path(self, relative: str) -> Path:
        """Resolve a path from params against the params file's directory."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else self.root() / candidate


def _format_errors(error: ValidationError, source: Path) -> str:
    lines = [f"{source}: invalid parameters:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        found = item.get("input")
        if item["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}' (found value {found!r}); remove it or fix its spelling")
        else:
            lines.append(f"  - '{key}': {item['msg']} (found {found!r})")
    lines.append("Fix params.yaml (its comments list each key's choices; README 'How it fits together') and run again.")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: Path = DEFAULT_PARAMS) -> Params:
    """Validate a params mapping; ParamsError names every wrong key with the found value."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, found {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None
    params._root = source.resolve().parent
    params._source = source.resolve()
    return params


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    return parse_params(raw, path)


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Params as {'word2vec.train.lr': 0.002, ...}: the full keys MLflow and DVC show."""
    data = params.model_dump() if isinstance(params, BaseModel) else params
    flat: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def set_params(path: Path | str, overrides: list[str]) -> None:
    """Apply `key.sub=value` overrides to params.yaml in place (comments kept), like `dvc exp run -S`.

    The result is validated before it is written, so a bad override leaves the file untouched; it is
    written through a uniquely named temporary file and renamed, so concurrent calls never collide.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        """Writes None as `null` (ruamel's default is an empty value), in a subclass so the shared
        representer DVC uses in this process is untouched."""

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    path = Path(path)
    rt = YAML()
    rt.Representer = Representer
    rt.preserve_quotes = True
    document = rt.load(path.read_text())
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ParamsError(f"override {override!r}: expected KEY=VALUE, e.g. word2vec.train.lr=0.01")
        value = yaml.safe_load(text) if text else ""
        node = document
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ParamsError(f"override {override!r}: '{part}' is not a section of {path}")
            node = node[part]
        node[parts[-1]] = value
    import io

    buffer = io.StringIO()
    rt.dump(document, buffer)
    parse_params(yaml.safe_load(buffer.getvalue()), path)
    write_text(path, buffer.getvalue())
