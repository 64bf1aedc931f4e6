"""The HTTP API with FastAPI's test client: every endpoint and every bad input."""

import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from fashionnet.server.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_bundle):
    app = create_app(tiny_bundle.bundle.path, max_bytes=200_000, max_pixels=1_000_000,
                     max_batch=4, backend="keras")
    return TestClient(app, raise_server_exceptions=False)


def jpeg(color=(200, 20, 20), size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_predict_multipart_and_raw_body(client):
    r = client.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")})
    assert r.status_code == 200, r.text
    heads = r.json()["heads"]
    assert set(heads) == {"color", "category"}
    assert heads["color"]["label"] in heads["color"]["probabilities"]
    assert abs(sum(heads["category"]["probabilities"].values()) - 1) < 1e-3
    raw = client.post("/v1/predict", content=jpeg(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["heads"] == heads


def test_batch_is_answered_per_image(client, tiny_bundle, monkeypatch):
    calls = []
    predictor = client.app.state.predictor
    original = predictor.predict_arrays
    monkeypatch.setattr(predictor, "predict_arrays",
                        lambda images, *a: calls.append(len(images)) or original(images, *a))
    files = [("files", ("a.jpg", jpeg(), "image/jpeg")),
             ("files", ("bad.jpg", b"not an image", "image/jpeg")),
             ("files", ("c.jpg", jpeg((0, 0, 200)), "image/jpeg"))]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert "heads" in results[0] and "heads" in results[2]
    assert results[1] == {"source": "bad.jpg", "error": "bad.jpg: not an image"}
    assert calls == [2]  # one model call for the whole batch


def test_model_health_and_openapi(client):
    info = client.get("/v1/model").json()
    assert [h["name"] for h in info["heads"]] == ["color", "category"]
    assert info["input_size"] == 32 and "red_shoes" not in info["trained_combinations"]
    assert client.get("/healthz").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "<title>FashionNet</title>" in page.text
    assert "http" not in page.text.split("<script>")[0].replace("http-equiv", "")



@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside_the_server(client, page):
    import re

    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""", html.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert not re.search(r"https?://|//cdn|jsdelivr|unpkg|googleapis", html.text)
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert any(u.endswith(".js") for u in urls)
    if page == "/docs":
        assert "validatorUrl" in html.text and "/openapi.json" in urls


def test_openapi_describes_the_upload_as_a_file(client):
    body = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}

@pytest.mark.parametrize("kwargs,status,message", [
    ({"files": {"file": ("x.txt", b"hello", "text/plain")}}, 400, "not an image"),
    ({"files": {"file": ("t.jpg", jpeg()[:200], "image/jpeg")}}, 400, "t.jpg"),
    ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty upload"),
    ({"files": {"image": ("a.jpg", jpeg(), "image/jpeg")}}, 422, "expected multipart field 'file'"),
    ({"data": {"file": "just text"}, "files": {"other": ("a", b"x")}}, 422, "must be a file"),
    ({"content": b"x" * 1_300_000, "headers": {"content-type": "image/jpeg"}}, 413, "over the limit"),
    ({"files": {"file": ("big.png", None, "image/png")}}, 413, "over the limit"),
])
def test_bad_inputs_get_json_4xx_and_the_server_keeps_serving(client, kwargs, status, message):
    if kwargs.get("files", {}).get("file", (None, 1))[1] is None:
        buf = io.BytesIO()
        Image.new("L", (1500, 1000)).save(buf, "PNG")  # 1.5 M pixels > max_pixels
        kwargs = {"files": {"file": ("big.png", buf.getvalue(), "image/png")}}
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert "Traceback" not in r.text
    assert client.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 200


def test_batch_limits(client):
    files = [("files", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(5)]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 413 and "batch limit of 4" in r.json()["error"]
    r = client.post("/v1/predict/batch", content=jpeg(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 415


def test_the_model_card_is_served_and_linked_from_the_page(client, tiny_bundle):
    card = client.get("/v1/model/card")
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text == (tiny_bundle.bundle.path / "MODEL_CARD.md").read_text()
    assert "`red_shoes`" in card.text  # the combination its training never saw
    assert 'href="/v1/model/card"' in client.get("/").text


def test_a_bundle_without_a_card_gets_one_generated(tiny_bundle, tmp_path):
    import shutil

    path = tmp_path / "old"
    shutil.copytree(tiny_bundle.bundle.path, path)
    (path / "MODEL_CARD.md").unlink()
    app = create_app(path, backend="keras")
    text = TestClient(app).get("/v1/model/card").text
    assert text.startswith("# Model card: old") and "## Test figures" in text
