"""Model zoo and load_model: names, deepcomp model files, state_dicts, TorchScript, pickles."""

import pytest
import torch
from torch import nn

from deepcomp.errors import ModelLoadError
from deepcomp.zoo import LeNet5, LeNet300100, LoadedModel, load_model, resolve_arch, save_model


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def test_lenets_match_the_paper():
    assert nparams(LeNet300100()) == 266_610
    assert nparams(LeNet5()) == 431_080
    assert [n for n, m in LeNet5().named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == \
        ["conv1", "conv2", "fc1", "fc2"]
    assert [n for n, m in LeNet300100().named_modules() if isinstance(m, nn.Linear)] == ["fc1", "fc2", "fc3"]
    x = torch.randn(3, 1, 28, 28)
    assert LeNet5()(x).shape == (3, 10) and LeNet300100(num_classes=4)(x).shape == (3, 4)


@pytest.mark.parametrize("spec,arch", [("zoo:lenet-5", "lenet-5"), ("zoo:lenet-300-100", "lenet-300-100"),
                                       ("lenet5", "lenet-5")])
def test_zoo_names(spec, arch):
    lm = load_model(spec)
    assert isinstance(lm, LoadedModel) and lm.arch == arch and lm.input_shape == (1, 28, 28)
    assert not lm.model.training


def test_torchvision_name_and_weights(tmp_path):
    lm = load_model("torchvision:resnet18", num_classes=3)
    assert lm.input_shape == (3, 224, 224) and lm.arch == "resnet18" and lm.model.fc.out_features == 3
    path = tmp_path / "w.pt"
    torch.save(lm.model.state_dict(), path)
    again = load_model("torchvision:resnet18", weights=str(path))  # class count read off the weights
    assert again.model.fc.out_features == 3
    torch.testing.assert_close(again.model.fc.weight, lm.model.fc.weight)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model("torchvision:resnet34", weights=str(path))


def test_resolve_arch():
    m, shape = resolve_arch("zoo:lenet-5", num_classes=7)
    assert shape == (1, 28, 28) and m.fc2.out_features == 7
    m, shape = resolve_arch("torchvision:alexnet")
    assert shape == (3, 224, 224)
    with pytest.raises(ModelLoadError, match="Did you mean resnet18"):
        resolve_arch("torchvision:resnet19")


def test_save_and_load_deepcomp_file(tmp_path):
    model = LeNet5(num_classes=6)
    path = tmp_path / "m.pt"
    save_model(str(path), model, "zoo:lenet-5", (1, 28, 28), extra={"note": "hi"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "deepcomp-model" and raw["num_classes"] == 6 and raw["extra"] == {"note": "hi"}
    lm = load_model(str(path))
    assert lm.arch == "lenet-5" and lm.input_shape == (1, 28, 28) and lm.model.fc2.out_features == 6
    for k, v in model.state_dict().items():
        torch.testing.assert_close(lm.model.state_dict()[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_state_dict_needs_arch(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(LeNet300100().state_dict(), path)
    with pytest.raises(ModelLoadError, match="--arch"):
        load_model(str(path))
    lm = load_model(str(path), arch="lenet-300-100")
    assert lm.arch == "lenet-300-100"
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(str(path), arch="lenet-5")
    torch.save({"state_dict": LeNet300100().state_dict(), "epoch": 3}, path)
    assert load_model(str(path), arch="zoo:lenet-300-100").arch == "lenet-300-100"


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(LeNet5(), path)
    with pytest.raises(ModelLoadError, match="runs arbitrary code.*--trust-pickle"):
        load_model(str(path))
    lm = load_model(str(path), trust_pickle=True)
    assert isinstance(lm.model, LeNet5) and lm.input_shape == (1, 28, 28)


def test_torchscript_file(tmp_path):
    path = tmp_path / "ts.pt"
    model = LeNet5().eval()
    torch.jit.save(torch.jit.script(model), str(path))
    lm = load_model(str(path))
    assert isinstance(lm.model, torch.jit.ScriptModule) and lm.input_shape == (1, 28, 28)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(lm.model(x), model(x))


@pytest.mark.parametrize("spec,needle", [
    ("zoo:lenet6", "Did you mean lenet-5"),
    ("foo:bar", "unknown model namespace"),
    ("/nonexistent/model.pt", "does not exist"),
    ("resnet", "neither an existing file nor a known model name"),
])
def test_user_mistakes(spec, needle):
    with pytest.raises(ModelLoadError, match=needle):
        load_model(spec)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("zoo:lenet-5", weights=str(tmp_path / "missing.pt"))
