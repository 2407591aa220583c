"""The server in front of an InternLM-XComposer2-4KHD engine: an image_url request through the official client gets
the engine's own answer, with max_dynamic_patch as the HD budget, and /v1/models names the model."""

import openai
import pytest
from PIL import Image

from tests.serve.support import data_url, running_server


@pytest.fixture(scope="module")
def client(xc_engine):
    with running_server(xc_engine, model_name="xc-test") as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_an_image_url_request_gets_the_engines_answer(client, xc_engine):
    img = Image.new("RGB", (500, 300), (20, 120, 200))
    content = [{"type": "image_url", "image_url": {"url": data_url(img)}}, {"type": "text", "text": "What is it?"}]
    reply = client.chat.completions.create(
        model="xc-test",
        messages=[{"role": "user", "content": content}],
        max_tokens=10,
        temperature=0,
        extra_body={"max_dynamic_patch": 2, "ignore_eos": True},
    )
    want = xc_engine.generate("<image>\nWhat is it?", [img], max_num=2, max_new_tokens=10, ignore_eos=True)
    assert reply.choices[0].message.content == want.text
    assert reply.usage.prompt_tokens == want.prompt_tokens and reply.usage.completion_tokens == 10
    assert [m.id for m in client.models.list().data] == ["xc-test"]
