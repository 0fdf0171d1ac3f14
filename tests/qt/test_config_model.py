"""A checkpoint folder with a config.json: its model is one click away (issue 15), built by transformers itself."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from explorer.session.config_model import config_model  # noqa: E402

TINY_LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=16, intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                  max_position_embeddings=32, tie_word_embeddings=False)


@pytest.fixture
def llama_folder(tmp_path):
    """A folder as the Hub gives it: config.json and model.safetensors (saved by transformers' own model), with one
    key dropped so that the simulated load has something to say."""
    from safetensors.torch import save_file
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    config = transformers.AutoConfig.for_model(**{k: v for k, v in TINY_LLAMA.items() if k != "architectures"})
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
    del sd["lm_head.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    return folder


def test_config_model_reads_the_architecture_and_refuses_what_is_not_a_config(tmp_path, llama_folder):
    assert config_model(str(llama_folder)) == (f"hf:{llama_folder}", "LlamaForCausalLM")
    assert config_model(str(llama_folder / "model.safetensors")) == (f"hf:{llama_folder}", "LlamaForCausalLM")
    (tmp_path / "cfg").mkdir()
    for text in ('{"model_type": "llama"}', '{"architectures": ["X"]}', "[1, 2]", "{not json", '{"model_type": 3}'):
        (tmp_path / "cfg" / "config.json").write_text(text)
        assert config_model(str(tmp_path / "cfg")) is None, text
    assert config_model("https://example.org/m/model.safetensors") is None
    assert config_model(str(tmp_path / "nothing-here")) is None


def test_one_click_puts_the_model_left_and_the_checkpoint_right_and_simulates_as_transformers_loads(
        qtbot, make_window, llama_folder):
    w = make_window()
    w.open_path(0, str(llama_folder))
    qtbot.waitUntil(lambda: w.comparison is not None and w.is_idle(), timeout=60000)
    button = w.compare.left_header.model_button
    assert button.isVisibleTo(w) and "LlamaForCausalLM" in button.text()
    assert not w.compare.right_header.model_button.isVisibleTo(w)
    button.click()
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.sides[0].is_model and w.sides[1] is not None
                    and w.comparison is not None and w.comparison.left is w.sides[0] and w.is_idle(), timeout=120000)
    assert w.sides[0].text == f"hf:{llama_folder}"
    assert w.sides[1].text == str(llama_folder)
    assert not w.compare.left_header.model_button.isVisibleTo(w)     # a model side offers nothing
    with qtbot.waitSignal(w.sig_simulation_done, timeout=120000) as blocker:
        w.act_simulate.trigger()
    report = blocker.args[0]
    # what torch says when transformers' own model loads this state dict
    config = transformers.AutoConfig.for_model(**{k: v for k, v in TINY_LLAMA.items() if k != "architectures"})
    from safetensors.torch import load_file
    model = transformers.LlamaForCausalLM(config)
    with pytest.raises(RuntimeError) as raised:
        model.load_state_dict(load_file(str(llama_folder / "model.safetensors")))
    assert report.error_message == str(raised.value)
    assert list(report.missing_keys) == ["lm_head.weight"]
