"""Model specs through the meta route (explorer.core.model_build wired into model_source and simulate): a model built
on the meta device (a budget nothing fits in) gives the simulation of the real model -- raise or not, torch's exact
message, missing, unexpected and mismatched keys -- checked against torch's own load_state_dict on the real model; a
model over the budget is said to be not materialized (one line, one JSON field) and is never allocated; ``hf:`` specs
of three architectures against checkpoints of sibling heads give torch's answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from explorer.core import open_checkpoint
from explorer.core.model_build import BUDGET_ENV, build_model
from explorer.core.model_source import ModelSide, build_spec
from explorer.core.model_spec import looks_like_model_spec
from explorer.core.side import open_side
from explorer.core.simulate.run import simulate_load
from explorer.errors import NoDataError
from tests.core.test_simulate_diff import CASES, _save

ROOT = Path(__file__).resolve().parents[2]


def torch_answer(model: nn.Module, sd, **kw):
    """torch itself on the real model: (exception type and text or None, missing, unexpected)."""
    try:
        res = model.load_state_dict(sd, **kw)
    except Exception as e:  # noqa: BLE001 - the exception is the answer
        return (type(e).__name__, str(e)), None, None
    return None, list(res.missing_keys), list(res.unexpected_keys)


def structural(rep) -> tuple:
    return (rep.raises, rep.error_type, rep.error_message, rep.missing_keys, rep.unexpected_keys,
            rep.mismatched_keys, rep.aborted)


def meta_side(factory, label="m") -> ModelSide:
    """What ``ModelSide.from_spec`` gives for a spec whose model fits no budget."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build_model(factory, budget_bytes=-1)
    return ModelSide(built.module, label, not_materialized="" if built.materialized else built.note)


# every case of the corpus builds on meta (test below); a factory that cannot would take the real route
@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "nonstrict"])
@pytest.mark.parametrize("name", list(CASES))
def test_meta_route_simulates_like_the_real_model_and_torch(name, strict, assign, tmp_path):
    model_fn, sd_fn, _ = CASES[name]
    path = _save(sd_fn(), tmp_path, name)
    side = meta_side(model_fn)
    real_model = model_fn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep_meta = simulate_load(side, open_checkpoint(path), strict=strict, assign=assign)
        rep_real = simulate_load(ModelSide(real_model, "m"), open_checkpoint(path), strict=strict, assign=assign)
        exc, missing, unexpected = torch_answer(model_fn(), torch.load(path, weights_only=True), strict=strict,
                                                assign=assign)
    assert structural(rep_meta) == structural(rep_real)
    assert rep_meta.raises == (exc is not None)
    if exc is not None:
        assert (rep_meta.error_type, rep_meta.error_message) == exc
    elif not rep_meta.aborted:
        assert (rep_meta.missing_keys, rep_meta.unexpected_keys) == (missing, unexpected)
    assert list(rep_meta.keys) == list(rep_real.keys)
    if side.materialized:
        assert "model_not_materialized" not in rep_meta.to_json()
    else:
        assert not rep_meta.values_compared
        assert rep_meta.model_not_materialized.startswith("values of the model side are not materialized: ")
        assert rep_meta.model_not_materialized.endswith("; values are not compared")
        assert rep_meta.to_json()["model_not_materialized"] == rep_meta.model_not_materialized
        assert json.loads(rep_meta.dumps()) == rep_meta.to_json()
    assert "model_not_materialized" not in rep_real.to_json()


def test_most_of_the_corpus_really_goes_through_meta():
    on_meta = [name for name, (model_fn, _, _) in CASES.items() if not meta_side(model_fn).materialized]
    assert on_meta == list(CASES), sorted(set(CASES) - set(on_meta))   # every case of the corpus builds on meta


_FACTORY = '''
import torch
import torch.nn as nn


class Big(nn.Module):
    """40 GB of float32 if allocated; a buffer the factory creates on the CPU explicitly."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(32768, 32768, bias=False) for _ in range(10)])
        self.register_buffer("scale", torch.ones(4, device="cpu"))


def big():
    return Big()


def small(hidden=4):
    return nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden))
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(_FACTORY)
    return path


def test_a_spec_that_fits_is_built_for_real_and_one_over_the_budget_is_meta(factory_file):
    fits = ModelSide.from_spec(f"{factory_file}:small(hidden=5)", budget_bytes=2 ** 20)
    assert fits.materialized and fits.not_materialized == ""
    assert not fits.model[0].weight.is_meta and fits.read_key("0.weight").shape == (5, 3)
    over = ModelSide.from_spec(f"{factory_file}:small(hidden=5)", budget_bytes=16)
    assert not over.materialized and over.model[0].weight.is_meta
    assert over.not_materialized.startswith("values of the model side are not materialized: ")
    assert [i.shape for i in over.entries] == [i.shape for i in fits.entries]
    with pytest.raises(NoDataError, match="not materialized"):
        over.read_key("0.weight")


def test_the_budget_comes_from_the_environment(factory_file, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "100")
    assert not ModelSide.from_spec(f"{factory_file}:small").materialized
    monkeypatch.setenv(BUDGET_ENV, "1M")
    assert ModelSide.from_spec(f"{factory_file}:small").materialized
    assert open_side(f"{factory_file}:small").materialized


def test_a_factory_creating_tensors_on_the_cpu_still_works(factory_file, tmp_path):
    built = build_spec(f"{factory_file}:big", budget_bytes=2 ** 30)
    assert not built.materialized and built.module.layers[0].weight.is_meta
    assert not built.module.scale.is_meta and built.module.scale.tolist() == [1.0] * 4
    assert ModelSide(built.module, "big", not_materialized=built.note).read_key("scale").tolist() == [1.0] * 4
    ck = tmp_path / "scale.safetensors"
    save_file({"scale": torch.full((4,), 2.0)}, str(ck))
    side = ModelSide.from_spec(f"{factory_file}:big", budget_bytes=2 ** 30)
    rep = simulate_load(side, open_checkpoint(ck), strict=False)
    assert not rep.raises and rep.missing_keys == [f"layers.{i}.weight" for i in range(10)]
    assert rep.model_not_materialized.startswith("values of the model side are not materialized: 42.9 GB")


_NEVER_ALLOCATED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))   # a 40 GB allocation fails under this limit
from explorer.cli import main
rc = main(sys.argv[1:])
sys.stdout.flush()
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")), file=sys.stderr)
sys.exit(rc)
"""


def test_a_40_gb_spec_is_never_allocated_on_the_command_line(factory_file, tmp_path):
    """Under a 3 GB address-space limit, ``simulate --model file.py:big`` (40 GB of float32) answers; the text says
    the values are not materialized, the JSON carries the field; peak RSS stays far below the model."""
    ck = tmp_path / "partial.safetensors"
    save_file({"layers.0.weight": torch.zeros(2, 2), "scale": torch.ones(4)}, str(ck))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(BUDGET_ENV, None)
    base = [sys.executable, "-c", textwrap.dedent(_NEVER_ALLOCATED), "simulate", "--model", f"{factory_file}:big",
            "--checkpoint", str(ck), "--model-budget", "8GB"]
    text = subprocess.run(base, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert text.returncode == 1, text.stderr   # would raise: 9 missing keys and a size mismatch
    lines = text.stdout.splitlines()
    assert lines[3] == ("values of the model side are not materialized: 42.9 GB of parameters and buffers over the "
                        "8.6 GB budget (--model-budget or STATE_DICT_EXPLORER_MODEL_BUDGET changes it); 16 bytes of "
                        "it the factory created on the CPU itself; values are not compared")
    assert "size mismatch for layers.0.weight: copying a param with shape torch.Size([2, 2]) from checkpoint, the " \
           "shape in current model is torch.Size([32768, 32768])." in text.stdout
    peak_kb = int(text.stderr.split("VmHWM:")[1].split()[0])
    assert peak_kb < 1_500_000, text.stderr[-2000:]
    js = subprocess.run(base + ["--json"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    out = json.loads(js.stdout)
    assert out["model_not_materialized"] == lines[3] and out["raises"]
    assert len(out["missing_keys"]) == 9


def test_a_checkpoint_side_model_over_the_budget_is_a_clear_error(factory_file, cli):
    res = cli("simulate", "--model", f"{factory_file}:small", "--checkpoint", f"{factory_file}:small",
              "--model-budget", "16")
    assert res.returncode == 2 and "a model loaded into another needs its values" in res.stdout + res.stderr
    res = cli("simulate", "--model", f"{factory_file}:small", "--checkpoint", f"{factory_file}:small")
    assert res.returncode == 0 and "not materialized" not in res.stdout


def test_hf_specs_are_model_specs_and_hub_urls_are_not(tmp_path):
    assert looks_like_model_spec(f"hf:{tmp_path}")
    assert looks_like_model_spec(f"hf:{tmp_path}:BertModel")
    assert not looks_like_model_spec("hf://org/repo/model.safetensors")


# ---- hf: specs: three architectures, checkpoints of sibling heads ---------------------------------------------------

TINY = {
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=16, intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                  max_position_embeddings=64, tie_word_embeddings=False),
    "bert_cls": dict(model_type="bert", architectures=["BertForSequenceClassification"], hidden_size=16,
                     intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
                     max_position_embeddings=32, num_labels=3),
    "bert": dict(model_type="bert", architectures=["BertModel"], hidden_size=16, intermediate_size=32,
                 num_hidden_layers=2, num_attention_heads=4, vocab_size=64, max_position_embeddings=32),
}
# (folder, class of the spec or None, class whose state dict is the checkpoint)
HF_CASES = [
    ("llama", None, "LlamaForSequenceClassification"),           # causal LM <- sequence classifier
    ("llama", "LlamaForSequenceClassification", "LlamaForCausalLM"),
    ("llama", "LlamaModel", "LlamaForCausalLM"),                  # base model <- causal LM (prefix model.)
    ("bert_cls", None, "BertForMaskedLM"),                        # sequence classifier <- masked LM
    ("bert_cls", None, "BertModel"),
    ("bert", None, "BertForSequenceClassification"),              # encoder <- sequence classifier (prefix bert.)
    ("bert", None, "BertModel"),
]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hfm")
    out = {}
    for name, config in TINY.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        out[name] = root / name
    return transformers, out


def _hf_model(transformers, folder, cls_name):
    config = transformers.AutoConfig.from_pretrained(str(folder))
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config)


def _sibling_checkpoint(transformers, folder, cls_name, path):
    model = _hf_model(transformers, folder, cls_name)
    seen, sd = set(), {}
    for k, v in model.state_dict().items():   # safetensors refuses shared storage: tied weights saved once
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            sd[k] = v.detach().clone().contiguous()
    save_file(sd, str(path))
    return load_file(str(path))   # in the file's order, as torch would be handed it


@pytest.mark.parametrize("budget", [None, -1], ids=["fits", "meta"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "nonstrict"])
@pytest.mark.parametrize("folder, cls, ck_cls", HF_CASES)
def test_hf_spec_against_sibling_heads_gives_torchs_answer(hf_dirs, folder, cls, ck_cls, strict, budget, tmp_path):
    transformers, dirs = hf_dirs
    ck = tmp_path / "ck.safetensors"
    sd = _sibling_checkpoint(transformers, dirs[folder], ck_cls, ck)
    spec = f"hf:{dirs[folder]}" + (f":{cls}" if cls else "")
    side = ModelSide.from_spec(spec, budget_bytes=budget)
    assert side.materialized == (budget is None)
    model_cls = cls or TINY[folder]["architectures"][0]
    assert type(side.model).__name__ == model_cls
    real = _hf_model(transformers, dirs[folder], model_cls)
    assert [(i.path, i.shape, i.dtype) for i in side.entries] == \
        [(i.path, i.shape, i.dtype) for i in ModelSide(real).entries]
    exc, missing, unexpected = torch_answer(real, dict(sd), strict=strict)
    rep = simulate_load(side, open_checkpoint(ck), strict=strict)
    assert rep.raises == (exc is not None)
    if exc is not None:
        assert (rep.error_type, rep.error_message) == exc
    else:
        assert (rep.missing_keys, rep.unexpected_keys) == (missing, unexpected)
    assert ("model_not_materialized" in rep.to_json()) == (budget == -1)


def test_hf_spec_on_the_command_line(hf_dirs, tmp_path, cli):
    transformers, dirs = hf_dirs
    ck = tmp_path / "cls.safetensors"
    sd = _sibling_checkpoint(transformers, dirs["llama"], "LlamaForSequenceClassification", ck)
    exc, _, _ = torch_answer(_hf_model(transformers, dirs["llama"], "LlamaForCausalLM"), dict(sd))
    for budget in ("1GB", "1KB"):
        args = ("simulate", "--model", f"hf:{dirs['llama']}", "--checkpoint", str(ck), "--json", "--model-budget",
                budget)
        if budget == "1KB":   # the real command line, in its own process
            done = cli.sub(*args)
        else:
            done = cli(*args)
        rc, out = done.returncode, done.stdout
        got = json.loads(out)
        assert rc == 1 and (got["error_type"], got["error_message"]) == exc
        assert ("model_not_materialized" in got) == (budget == "1KB")
    res = cli("simulate", "--model", f"hf:{dirs['llama']}", "--checkpoint", str(ck), "--no-strict")
    assert res.returncode == 0 and "would succeed: missing_keys=1, unexpected_keys=1" in res.stdout


def test_hf_spec_without_transformers_says_how_to_install(hf_dirs, tmp_path):
    _, dirs = hf_dirs
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from explorer.cli import main\nsys.exit(main(sys.argv[1:]))")
    ck = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(ck))
    out = subprocess.run([sys.executable, "-c", code, "simulate", "--model", f"hf:{dirs['llama']}", "--checkpoint",
                          str(ck)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    said = (out.stdout + out.stderr).strip().splitlines()
    assert len(said) == 1 and 'pip install -e ".[hf]"' in said[0]


def test_keys_of_a_model_not_materialized_load_with_their_values_not_compared(factory_file, tmp_path, cli):
    """Over the budget, a key that loads is not called "changed": its values were not compared. The text says
    "loads, not compared" (flag "?"), the JSON keeps torch's status and adds ``values_compared: false``; the window's
    rows say it too, and its module rows count no difference. Within the budget the same keys are compared."""
    from explorer.session import compare as C
    sd = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).state_dict()
    ck = tmp_path / "same_layout.pt"
    torch.save(sd, ck)
    weight_line = lambda out: next(line for line in out.splitlines() if " 0.weight " in line)  # noqa: E731
    over = cli("simulate", "--model", f"{factory_file}:small", "--checkpoint", ck, "--model-budget", "16")
    assert over.returncode == 0, over.stderr
    assert weight_line(over.stdout).split()[:2] == ["?", "0.weight"] and "loads, not compared" in weight_line(
        over.stdout)
    assert "? = written, values not compared: assumed changed, 7 keys" in over.stdout
    assert "? 1.running_mean" in over.stdout      # overwritten: that is exact; by other values: not known
    fits = cli("simulate", "--model", f"{factory_file}:small", "--checkpoint", ck)
    assert "not compared" not in fits.stdout and weight_line(fits.stdout).split()[:3] == ["*", "0.weight", "changed"]
    js = json.loads(cli("simulate", "--model", f"{factory_file}:small", "--checkpoint", ck, "--model-budget", "16",
                        "--json").stdout)
    weights = [k for k in js["keys"] if k["key"] == "0.weight"]
    assert weights and weights[0]["status"] == "changed" and weights[0]["values_compared"] is False
    js = json.loads(cli("simulate", "--model", f"{factory_file}:small", "--checkpoint", ck, "--json").stdout)
    assert all("values_compared" not in k for k in js["keys"])

    model = ModelSide.from_spec(f"{factory_file}:small", budget_bytes=16)
    left = C.side_data(model, "small")
    right = C.side_data(open_side(str(ck)), str(ck))
    comp = C.Comparison(left, right)
    comp.apply_simulation(simulate_load(model, right.side))
    assert comp.rows["0.weight"].sim_status == C.UNCOMPARED
    assert comp.modules["0"].differences == 0 and comp.modules["0"].problems == 0
