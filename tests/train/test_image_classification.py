"""Image classification: a real 2-worker Ray Train run of the shipped tiny-ViT job on real handwritten digits.

The digits (scikit-learn's 1,797 8x8 images) are written as PNG class folders; a held-out fifth is never shown to
the run. The run's artifact is judged from outside hfray: plain ``transformers.pipeline("image-classification")``
on the held-out images must beat the majority class by a wide margin; ``hfray predict`` and ``/v1/classify-image``
(real HTTP on Ray Serve; slow-marked) must answer what that pipeline answers. Bad input fails in the checks before
Ray starts.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import check_manifest
from hfray.cli import main
from hfray.config import JobConfig, read_yaml
from hfray.errors import ConfigError, DataError, ModelError
from hfray.train.run import preflight, run_training

JOB_FILE = Path(__file__).parents[2] / "jobs" / "digits_vit.yaml"
HELD_OUT = 397  # of 1,797 digits; the run trains on the other 1,400 (a tenth of them its validation split)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real digits as PNG folders: ``train/<label>/*.png``, and the held-out images with their labels."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    order = np.random.RandomState(0).permutation(len(data.target))
    held_out = []
    for n, i in enumerate(order):
        split = "held_out" if n < HELD_OUT else "train"
        folder = root / split / str(data.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i}.png"
        Image.fromarray(np.round(data.images[i] * 255 / 16).astype(np.uint8)).save(path)
        if split == "held_out":
            held_out.append((path, str(data.target[i])))
    return {"train": root / "train", "held_out": held_out}


def digits_job(tmp_path: Path, train: str, **sections: Any) -> dict[str, Any]:
    """The shipped job file, on ``train``, shortened to 240 steps (the job's 10 epochs take ~450)."""
    job = read_yaml(JOB_FILE)
    job["data"] = {**job["data"], "train": train, "validation_fraction": 0.1}
    job["training"] = {**job["training"], "max_steps": 240, "eval_strategy": "steps", "eval_steps": 120}
    job["storage"] = {"path": str(tmp_path / "runs"), "num_to_keep": 1, "max_failures": 0}
    job["tracking"] = {"mlflow": False, "progress_bar": False}
    for section, values in sections.items():
        job[section] = {**job.get(section, {}), **values}
    return job


@pytest.fixture(scope="module")
def trained(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory, digits: dict[str, Any]) -> Any:
    job = JobConfig.from_dict(digits_job(tmp_path_factory.mktemp("vit"), str(digits["train"])))
    return run_training(job)


@pytest.fixture(scope="module")
def reference(trained: Any) -> Any:
    """Plain transformers on the artifact folder: no hfray code in between."""
    from transformers import pipeline

    return pipeline("image-classification", model=trained.artifact)


def test_two_workers_beat_the_majority_class_on_held_out_digits(trained, reference, digits) -> None:
    from PIL import Image
    from sklearn.metrics import f1_score

    paths, truth = zip(*digits["held_out"], strict=True)
    predicted = [r[0]["label"] for r in reference([Image.open(p) for p in paths], top_k=1, batch_size=64)]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    majority = Counter(truth).most_common(1)[0][1] / len(truth)  # about 0.11: ten balanced classes
    # 240 steps reach ~0.75 here; an untrained or broken run stays near 0.1.
    assert accuracy >= max(0.5, 4 * majority), (accuracy, majority)
    assert f1_score(truth, predicted, average="macro") >= 0.45
    manifest = json.loads((Path(trained.artifact) / "hfray_manifest.json").read_text())
    check_manifest(manifest)
    assert manifest["task"] == "image-classification" and manifest["throughput"]["world_size"] == 2
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert {"eval_accuracy", "eval_f1_macro"} <= set(manifest["metrics"])


def test_hfray_predict_answers_as_the_pipeline(trained, reference, digits, capsys) -> None:
    paths = [str(p) for p, _ in digits["held_out"][:3]]
    assert main(["predict", trained.artifact, *paths, "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == paths
    want = reference(paths, top_k=2)
    assert [[p["label"] for p in line["predictions"]] for line in lines] == [[p["label"] for p in w] for w in want]
    assert main(["predict", trained.artifact, str(Path(paths[0]).with_suffix(".missing.png"))]) == 2


def test_pretrained_models_pass_through(trained, digits, tmp_path) -> None:
    """A pretrained dir (here the run's own artifact) brings its image processor; a Hub id offline is named."""
    pretrained = {"model": {"name_or_path": trained.artifact, "architecture": None}}
    checked, prepared = preflight(JobConfig.from_dict(digits_job(tmp_path, str(digits["train"]), **pretrained)))
    assert prepared.labels == [str(d) for d in range(10)]
    hub = {"model": {"name_or_path": "google/vit-base-patch16-224-in21k", "architecture": None}}
    with pytest.raises(ModelError, match="model.name_or_path"):
        preflight(JobConfig.from_dict(digits_job(tmp_path, str(digits["train"]), **hub)))


@pytest.fixture(scope="module")
def server(trained: Any) -> Iterator[str]:
    from ray import serve

    from hfray.cluster.local import free_port
    from hfray.serving.config import ServeConfig
    from hfray.serving.driver import serve_artifacts, wait_healthy

    try:
        url = serve_artifacts(ServeConfig(artifact_root=trained.artifact, port=free_port(), num_cpus=0.5))
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()


@pytest.mark.slow  # ~15 s more on 2 loaded cores (a Serve app start): pytest -m slow -k classify_image
def test_classify_image_route_over_http(server, reference, digits) -> None:
    paths = [p for p, _ in digits["held_out"][:2]]
    want = [[p["label"] for p in r] for r in reference([str(p) for p in paths], top_k=3)]
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
    got = httpx.post(f"{server}/v1/classify-image", files=files, data={"top_k": "3"}, timeout=120)
    assert got.status_code == 200, got.text
    assert [[p["label"] for p in r] for r in got.json()["results"]] == want
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    got = httpx.post(f"{server}/v1/classify-image", json={"image": encoded, "top_k": 3}, timeout=120)
    assert got.status_code == 200, got.text
    assert [[p["label"] for p in r] for r in got.json()["results"]] == want

    def problem(**kwargs: Any) -> tuple[int, str]:
        answer = httpx.post(f"{server}/v1/classify-image", timeout=60, **kwargs)
        return answer.status_code, answer.json()["detail"]["field"]

    assert problem(json={"image": [encoded[0], "not base64!"]}) == (422, "image[1]")
    assert problem(json={"image": base64.b64encode(b"not an image").decode()}) == (422, "image")
    assert problem(json={"image": encoded[0], "top_k": "2"}) == (422, "top_k")
    assert problem(json={"image": encoded[0], "colour": "red"}) == (422, "colour")
    assert problem(files=[("image", ("x.png", b"\x89PNG broken", "image/png"))]) == (422, "image")
    assert problem(files=files, data={"colour": "red"}) == (422, "colour")


# ----------------------------------------------------------------------------- checks before Ray


def test_shipped_job_checks_builtin_digits(capsys) -> None:
    assert main(["validate", str(JOB_FILE)]) == 0
    out = capsys.readouterr().out
    assert "{'train': 1437, 'validation': 360}" in out and "valid image-classification job" in out


def _write_image_rows(path: Path, images: list[bytes], labels: list[str], image_key: str = "image") -> Path:
    import datasets

    datasets.Dataset.from_dict({image_key: [{"bytes": b, "path": None} for b in images], "label": labels}).cast_column(
        image_key, datasets.Image()
    ).to_parquet(str(path))
    return path


def test_bad_input_is_named_before_ray_starts(tmp_path, digits) -> None:
    png = next(digits["train"].glob("0/*.png")).read_bytes()
    cases: list[tuple[dict[str, Any], type, str]] = []
    wrong_column = _write_image_rows(tmp_path / "pixels.parquet", [png, png], ["0", "1"], image_key="pixels")
    cases.append(({"data": {"train": str(wrong_column)}}, DataError, "image_classification.image_column 'image'"))
    no_label = tmp_path / "no_label.parquet"
    _write_image_rows(no_label, [png, png], ["0", "1"])
    cases.append(({"data": {"train": str(no_label), "label_column": "digit"}}, DataError, "data.label_column 'digit'"))
    broken = tmp_path / "folder"
    for label in ("0", "1"):
        (broken / label).mkdir(parents=True)
        (broken / label / "ok.png").write_bytes(png)
    (broken / "1" / "truncated.png").write_bytes(png[:20])
    cases.append(({"data": {"train": str(broken)}}, DataError, "truncated.png as an image"))
    relative = tmp_path / "relative.csv"
    relative.write_text("image,label\n0/ok.png,0\n1/ok.png,1\n")
    cases.append(({"data": {"train": str(relative)}}, DataError, "'0/ok.png' is a relative path"))
    for sections, error, message in cases:
        job = JobConfig.from_dict(digits_job(tmp_path, "replaced by the case", **sections))
        with pytest.raises(error, match=re.escape(message)):
            preflight(job)
    with pytest.raises(ConfigError, match="image_classification.augmentation.flip"):
        JobConfig.from_dict(digits_job(tmp_path, str(broken), image_classification={"augmentation": {"flip": True}}))


def test_augmentation_changes_training_images_only_as_configured(digits) -> None:
    import random

    import numpy as np
    from PIL import Image

    from hfray.data.images import augmenter

    image = Image.open(next(digits["train"].glob("3/*.png"))).convert("RGB")
    assert np.array_equal(np.asarray(augmenter()(image)), np.asarray(image))  # the defaults change nothing
    flip = augmenter(horizontal_flip=True)
    random.seed(0)
    original, mirror = np.asarray(image), np.asarray(image)[:, ::-1]
    outcomes = [("mirrored" if np.array_equal(f, mirror) else "same" if np.array_equal(f, original) else "other")
                for f in (np.asarray(flip(image)) for _ in range(20))]  # fmt: skip
    assert set(outcomes) == {"mirrored", "same"}, outcomes  # about half of each, nothing else
    every = augmenter(crop_scale_min=0.5, rotation_degrees=30, brightness=0.5, contrast=0.5)
    changed = every(image)
    assert changed.size == image.size and not np.array_equal(np.asarray(changed), np.asarray(image))
