"""``hf:DIR_OR_CONFIG_JSON[:CLASS]`` specs: the model a transformers config.json describes, built through the meta
route; its state dict is the one transformers builds the normal way, and loads give torch's answer."""
from __future__ import annotations

import json
import sys
import time
import warnings

import pytest
import torch

from explorer.core.model_build import HF_INSTALL, build_hf, parse_hf_spec
from explorer.errors import ModelSpecError

TINY_LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=16, intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                  max_position_embeddings=64, tie_word_embeddings=False)
TINY_BERT = dict(model_type="bert", architectures=["BertModel"], hidden_size=16, intermediate_size=32,
                 num_hidden_layers=2, num_attention_heads=4, vocab_size=64, max_position_embeddings=32)
TINY_GPT2 = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=16, n_layer=2, n_head=4, vocab_size=64,
                 n_positions=32)
LLAMA_70B = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=8192, intermediate_size=28672,
                 num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                 torch_dtype="bfloat16")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """transformers (imported once for the module) and a folder per config."""
    import transformers
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for name, config in {"llama": TINY_LLAMA, "bert": TINY_BERT, "gpt2": TINY_GPT2, "llama70b": LLAMA_70B}.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        dirs[name] = root / name
    return transformers, dirs


def _layout(model) -> dict:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _normal_way(transformers, folder, auto: str, cls: str | None = None):
    config = transformers.AutoConfig.from_pretrained(str(folder))
    if cls is not None:
        return getattr(transformers, cls)(config)
    return getattr(transformers, auto).from_config(config)


@pytest.mark.parametrize("name, spec_suffix, auto, cls", [
    ("llama", "", "AutoModelForCausalLM", None),
    ("llama", ":LlamaForSequenceClassification", None, "LlamaForSequenceClassification"),
    ("bert", "/config.json", "AutoModel", None),
    ("gpt2", "", "AutoModelForCausalLM", None),
])
def test_hf_spec_builds_the_model_transformers_builds(hf, name, spec_suffix, auto, cls):
    transformers, dirs = hf
    expected = _layout(_normal_way(transformers, dirs[name], auto, cls))
    real = build_hf(f"hf:{dirs[name]}{spec_suffix}")
    assert real.materialized and real.note == "" and _layout(real.module) == expected
    assert type(real.module).__name__ == (cls or json.loads((dirs[name] / "config.json").read_text())["architectures"][0])
    meta = build_hf(f"hf:{dirs[name]}{spec_suffix}", budget_bytes=0)
    assert not meta.materialized and meta.nbytes == real.nbytes and _layout(meta.module) == expected
    assert all(t.is_meta for t in meta.module.state_dict().values())


def _answer(model, sd, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the meta model warns that copying into meta tensors is a no-op
        try:
            res = model.load_state_dict(sd, **kw)
            return None, list(res.missing_keys), list(res.unexpected_keys)
        except Exception as e:  # noqa: BLE001 - the exception is the answer
            return (type(e).__name__, str(e)), None, None


@pytest.mark.parametrize("kw", [{}, {"strict": False}])
def test_checkpoints_of_sibling_heads_load_on_meta_as_on_the_real_model(hf, kw):
    _, dirs = hf
    causal = f"hf:{dirs['llama']}"
    classifier = f"hf:{dirs['llama']}:LlamaForSequenceClassification"
    sibling = {k: v.clone() for k, v in build_hf(causal).module.state_dict().items()}
    own = {k: v.clone() for k, v in build_hf(classifier).module.state_dict().items()}
    resized = {**own, "model.embed_tokens.weight": torch.zeros(65, 16)}
    answers = set()
    for sd in (sibling, own, resized):
        real = _answer(build_hf(classifier).module, sd, **kw)
        assert _answer(build_hf(classifier, budget_bytes=0).module, sd, **kw) == real
        answers.add(repr(real))
    assert len(answers) == 3
    if not kw:
        assert "score.weight" in repr(_answer(build_hf(classifier).module, sibling))


def test_a_70b_config_builds_on_meta_and_is_counted(hf):
    _, dirs = hf
    start = time.process_time()
    built = build_hf(f"hf:{dirs['llama70b']}")
    assert time.process_time() - start < 60   # CPU seconds, a wide margin: allocating 141 GB is not possible
    assert not built.materialized and "values of the model side are not materialized: 141.1 GB" in built.note
    h, inter, layers, vocab, kv = 8192, 28672, 80, 128256, 8 * 128
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    expected = 2 * vocab * h + layers * per_layer + h
    params = sum(p.numel() for p in built.module.parameters())
    assert params == expected == 70_553_706_496
    assert 2 * params <= built.nbytes < 2 * params + 2 ** 20   # bfloat16, plus the rotary buffers
    assert {p.dtype for p in built.module.parameters()} == {torch.bfloat16}
    assert all(t.is_meta for t in built.module.state_dict().values()) and len(built.module.state_dict()) == 723


def test_without_transformers_one_line_says_how_to_get_it(hf, monkeypatch):
    _, dirs = hf
    monkeypatch.setitem(sys.modules, "transformers", None)   # import transformers now raises ImportError
    with pytest.raises(ModelSpecError) as err:
        build_hf(f"hf:{dirs['llama']}")
    assert HF_INSTALL in str(err.value) and "\n" not in str(err.value)


def test_remote_code_is_a_clear_error_and_never_runs(hf, tmp_path):
    _, dirs = hf
    planted = tmp_path / "modeling_custom.py"
    planted.write_text("raise SystemExit('remote code ran')\n")
    custom = {"model_type": "custom", "architectures": ["CustomForCausalLM"],
              "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}
    (tmp_path / "config.json").write_text(json.dumps(custom))
    with pytest.raises(ModelSpecError, match="never runs code from a folder"):
        build_hf(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({**TINY_LLAMA, **custom, "model_type": "llama"}))
    with pytest.raises(ModelSpecError, match="CustomForCausalLM needs code from the model folder"):
        build_hf(f"hf:{tmp_path}")


@pytest.mark.parametrize("spec_tail, message", [
    (":NoSuchModelClass", "has no model class 'NoSuchModelClass'"),
    (":LlamaConfig", "is not a model class"),
    ("/missing.json", "no such file"),
])
def test_spec_errors_are_one_clear_line(hf, spec_tail, message):
    _, dirs = hf
    with pytest.raises(ModelSpecError, match=message) as err:
        build_hf(f"hf:{dirs['llama']}{spec_tail}")
    assert "\n" not in str(err.value)


def test_config_errors(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match="cannot read .* as JSON"):
        build_hf(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelSpecError, match="names no architectures; name the class: hf:DIR:LlamaModel"):
        build_hf(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaModel"]}))
    with pytest.raises(ModelSpecError, match="no model_type"):
        build_hf(f"hf:{tmp_path}")


def test_parse_hf_spec(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    config = str(tmp_path / "config.json")
    assert parse_hf_spec(f"hf:{tmp_path}") == (config, None)
    assert parse_hf_spec(f"hf:{tmp_path}/:BertModel") == (config, "BertModel")
    assert parse_hf_spec(f"hf:{config}:BertModel") == (config, "BertModel")
    with pytest.raises(ModelSpecError, match="no such file 'C:"):   # a drive letter is not a class name
        parse_hf_spec("hf:C:cfg")
    with pytest.raises(ModelSpecError, match="name a folder"):
        parse_hf_spec("hf:")
