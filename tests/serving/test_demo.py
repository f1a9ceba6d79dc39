"""The demo page (hfray serve --ui / hfray demo): a real headless Chromium submits text and reads the label.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them); skips only when they are missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import make_artifact, serve_config_for
from test_serving_lm import TINY_LLAMA

from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.errors import ConfigError
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

LABELS = ["cold", "warm", "hot"]
TEXT = "a bright and sunny afternoon by the sea"


@pytest.fixture(scope="module")
def demo_server(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("gradio", reason="the demo page needs the demo extra: pip install 'hfray[demo]'")
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    root = tmp_path_factory.mktemp("demo")
    make_artifact(root / "weather", LABELS, seed=3)
    language_models(root)
    cfg = serve_config_for(root, free_port(), default_model="weather", ui=True, max_new_tokens=16)
    try:
        url = serve_artifacts(cfg)
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()


def language_models(root: Path) -> None:
    """chat: a tiny causal LM with the SmolLM2 chat template (as SFT leaves); mlm: a tiny masked LM."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    from hfray.model.builtin import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_LLAMA)
    LlamaForCausalLM(config).save_pretrained(root / "chat")
    tok.save_pretrained(root / "chat")
    mini = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    bert = BertConfig(vocab_size=len(mini), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertForMaskedLM(bert).save_pretrained(root / "mlm")
    mini.save_pretrained(root / "mlm")
    for name, task in (("chat", "text-generation"), ("mlm", "fill-mask")):
        write_manifest(str(root / name), {"format": 1, "name": name, "metrics": {}, "task": task})


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def test_browser_submits_text_and_reads_the_api_label(demo_server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{demo_server}/ui/")
    box = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#demo_weather-text textarea")))
    box.send_keys(TEXT)
    browser.find_element(By.CSS_SELECTOR, "#demo_weather-submit").click()
    heading = (By.CSS_SELECTOR, "#demo_weather-label h2")
    wait.until(ready.visibility_of_element_located(heading))
    shown = browser.find_element(*heading).text.strip()

    # The HTTP API's answer for the same text: the page calls the same code in the same replica.
    api = httpx.post(f"{demo_server}/v1/classify", json={"inputs": TEXT, "top_k": 3}, timeout=60).json()
    assert shown == api["results"][0][0]["label"]
    assert shown in LABELS


def test_ui_with_an_auth_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ui: the demo page has no bearer-token auth"):
        ServeConfig.from_dict({"artifact_root": str(tmp_path), "ui": True, "auth_token": "secret-token"})


def test_chat_and_fill_mask_widgets_answer_as_the_api(demo_server: str) -> None:
    """The LM tabs through the page's own Gradio API (what their widgets send): the HTTP API's answers and errors."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from hfray.serving.replica.demo import message_text

    page = Client(f"{demo_server}/ui/", verbose=False)
    history, cleared = page.predict("Name a colour of the sky.", [], 8, api_name="/demo_chat_chat")
    assert cleared == "" and [m["role"] for m in history] == ["user", "assistant"]
    reply = message_text(history[-1]["content"])  # the Chatbot holds text parts, stripped
    body = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "Name a colour of the sky."}]}
    api = httpx.post(f"{demo_server}/v1/chat/completions", json=body, timeout=60).json()
    assert reply and reply == api["choices"][0]["message"]["content"].strip()

    fillers = page.predict("the sky is [MASK] today.", 3, api_name="/demo_mlm_fill_mask")
    body = {"model": "mlm", "inputs": "the sky is [MASK] today.", "top_k": 3}
    api = httpx.post(f"{demo_server}/v1/fill-mask", json=body, timeout=60).json()
    assert [c["label"] for c in fillers["confidences"]] == [r["token_str"] for r in api["results"][0]]

    # An API 4xx is the page's error message, word for word.
    with pytest.raises(AppError, match=r"inputs: no \[MASK\] token to fill"):
        page.predict("no mask here", 3, api_name="/demo_mlm_fill_mask")


def test_hfray_demo_is_serve_with_the_page(tmp_path: Path) -> None:
    from hfray.cli import build_parser
    from hfray.cli.serve import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["demo", str(tmp_path), "--port", "8123"])).ui is True
    assert config_from_args(parser.parse_args(["serve", str(tmp_path), "--ui"])).ui is True
    assert config_from_args(parser.parse_args(["serve", str(tmp_path)])).ui is False


def test_without_ui_the_mount_answers_404() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from hfray.serving.replica.demo import PAGES, UI_PATH, DemoMount

    assert "page" not in PAGES  # this process holds no ingress replica with ui: true
    app = FastAPI()
    app.mount(UI_PATH, DemoMount())
    answer = TestClient(app).get("/ui/")
    assert answer.status_code == 404 and answer.json()["detail"]["field"] == "ui"


def test_image_widget_sends_the_uploaded_pixels() -> None:
    """The image tab's body passes /v1/classify-image's own parser and checks and decodes to the uploaded pixels."""
    import asyncio
    import json

    import numpy as np
    from PIL import Image

    from hfray.serving.config import ServeConfig
    from hfray.serving.replica.demo import classify_image
    from hfray.serving.replica.image_routes import checked, parse_json

    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    parsed: list[tuple[list[Any], int, str | None]] = []

    async def route(path: str, body: dict[str, Any]) -> dict[str, Any]:  # the route's parsing, not its model
        assert path == "/v1/classify-image"
        parsed.append(checked(*parse_json(json.dumps(body).encode()), ServeConfig.from_dict({"artifact_root": "."})))
        return {"model": body["model"], "results": [[{"label": "7", "score": 0.9}, {"label": "1", "score": 0.1}]]}

    shown = asyncio.run(classify_image(route, "digits", Image.fromarray(pixels), 2))
    assert shown == {"7": 0.9, "1": 0.1}
    images, top_k, model = parsed[0]
    assert top_k == 2 and model == "digits" and len(images) == 1
    assert (np.asarray(images[0]) == pixels).all()
