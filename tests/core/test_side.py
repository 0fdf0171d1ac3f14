"""Both kinds of side fulfil the Side protocol that the rest of the code relies on."""
import torch

from explorer.core.side import CHECKPOINT, MODEL, Side, open_side


def test_checkpoint_and_model_are_sides(tmp_path):
    path = tmp_path / "m.pt"
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    torch.save(model.state_dict(), path)
    ck = open_side(path)
    md = open_side("demo:MyBatchNormModel")
    try:
        for side, kind in ((ck, CHECKPOINT), (md, MODEL)):
            assert isinstance(side, Side)
            assert side.kind == kind
            assert side.resolve_entry(None) == side.default_state_dict
            assert isinstance(side.module_classes(None), dict)
        assert list(ck.state_dict_infos()) == list(model.state_dict())
        assert torch.equal(ck.read_key("0.weight"), model.state_dict()["0.weight"])
        key = next(iter(md.state_dict_infos()))
        assert torch.equal(md.read_key(key), md.model.state_dict()[key])
    finally:
        ck.close()
        md.close()
