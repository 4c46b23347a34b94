"""--input-shape reaches the model loader, and a model is checked against the shape it is given."""

import pytest
import torch
from torch import nn

from deepcomp.cli import main


class BnFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(self.bn(x)).mean((2, 3)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_input_shape_reaches_the_loader_and_torchscript_is_checked(tmp_path, capsys):
    torch.manual_seed(0)
    model = BnFirst().eval()
    ts = tmp_path / "small.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 32, 32)), str(ts))
    out = tmp_path / "small.dcz"
    assert main(["compress", str(ts), "-o", str(out), "-q", "--input-shape", "3,32,32"]) == 0
    import deepcomp

    assert deepcomp.load(out).input_shape == (3, 32, 32)

    pkl = tmp_path / "bn_first_model.pt"
    torch.save(model, pkl)
    assert main(["compress", str(pkl), "--trust-pickle", "-o", str(out), "-q", "--input-shape", "3,16,16"]) == 0
    assert deepcomp.load(out).input_shape == (3, 16, 16)
    capsys.readouterr()  # a first layer with a 1-D weight says nothing about the input shape
    assert main(["compress", str(pkl), "--trust-pickle", "-o", str(out), "-q"]) != 0
    assert "--input-shape" in capsys.readouterr().err


class Fixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_without_input_shape_is_checked(tmp_path, capsys):
    ts = tmp_path / "fixed.pt"
    conv = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    torch.jit.save(torch.jit.trace(conv, torch.randn(1, 3, 8, 8)), str(ts))
    assert main(["compress", str(ts), "-o", str(tmp_path / "f.dcz"), "-q"]) != 0
    err = capsys.readouterr().err
    assert "does not run on an input of shape [N, 3, 224, 224]" in err and "--input-shape" in err
