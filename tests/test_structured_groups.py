"""Channel groups across residual adds and concats: ResNet, MobileNetV2, DenseNet, GoogLeNet at small
input sizes; the hardened model equals the masked one and saves as TorchScript; user errors."""

import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from deepcomp.dcz import decompress
from deepcomp.errors import DeepcompError, InputShapeError, RecipeError, UnsupportedOpError
from deepcomp.pipeline import compress
from deepcomp.prune import find_channel_groups, prune_channels, slim
from deepcomp.runtime import load
from structured_helpers import n_params, randomize_bn, same_outputs


def torchscript_roundtrip(model, shape, tmp_path):
    """Script the model, save it, load it back: it computes what the eager model computes."""
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():  # torch 2.x marks TorchScript deprecated; it is what we check here
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model.eval()), str(path))
        loaded = torch.jit.load(str(path))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


def test_resnet_residual_stage_is_one_group(resnet18, tmp_path):
    model = resnet18
    new, plan = prune_channels(model, 0.5, "l1", example_input_shape=(3, 32, 32), return_plan=True)
    stage1 = plan.groups["conv1"]  # the stem's channels run through every add of layer1
    assert [s.layer for s in stage1.producers] == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert {s.layer for s in stage1.bns} == {"bn1", "layer1.0.bn2", "layer1.1.bn2"}
    assert {s.layer for s in stage1.consumers} == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1",
                                                   "layer2.0.downsample.0"}
    stage4 = plan.groups[plan.group_of("layer4.1.conv2")]
    assert "layer4.0.downsample.0" in stage4.layers and ("fc", 0, 1) in stage4.consumers
    assert set(plan.skipped) == {"fc"}
    # the kept channels are those with the largest mean L1 over the group's producers
    l1 = torch.stack([model.get_submodule(s.layer).weight.detach().abs().sum((1, 2, 3)) for s in stage1.producers])
    assert set(plan.keep["conv1"].tolist()) == set(torch.argsort(l1.mean(0), descending=True)[:32].tolist())
    for m in (new.conv1, new.layer1[0].conv2, new.layer1[1].conv2, new.layer2[0].downsample[0]):
        assert 32 in (m.out_channels, m.in_channels)
    assert new.layer1[1].bn2.num_features == 32 and new.fc.in_features == 256
    assert n_params(new) < 0.3 * n_params(model)
    same_outputs(model, new, plan, (2, 3, 32, 32), atol=1e-4)
    torchscript_roundtrip(new, (2, 3, 32, 32), tmp_path)


def test_hardened_resnet_compresses_and_runs_on_the_runtime(resnet18, tmp_path):
    """The smaller layers capture into a .dcz; the runtime computes what torch computes with the
    file's (shared, pruned) weights."""
    new = prune_channels(resnet18, 0.75, example_input_shape=(3, 32, 32)).eval()
    compress(new, input_shape=(3, 32, 32), sparsity=0.5, progress=False).save(tmp_path / "m.dcz")
    shared = copy.deepcopy(new)
    shared.load_state_dict({k: torch.from_numpy(v) for k, v in decompress(tmp_path / "m.dcz").items()}, strict=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = shared(torch.from_numpy(x)).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(load(tmp_path / "m.dcz")(x), ref, rtol=1e-4, atol=1e-4)


def test_a_layer_names_its_group(resnet18):
    plan = prune_channels(resnet18, {"layer1.0.conv2": 0.25}, example_input_shape=(3, 32, 32), return_plan=True)[1]
    assert plan.removed() == {"conv1": 16}
    with pytest.raises(RecipeError, match="shares its channels"):
        prune_channels(resnet18, {"layer1.0.conv2": 0.25, "conv1": 0.5}, example_input_shape=(3, 32, 32))
    with pytest.raises(RecipeError, match="reach the model's output"):
        prune_channels(resnet18, {"fc": 0.5}, example_input_shape=(3, 32, 32))


def test_mobilenet_v2_inverted_residuals_and_depthwise(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.mobilenet_v2(num_classes=10)).eval()
    new, plan = prune_channels(model, 0.5, "l1", example_input_shape=(3, 32, 32), return_plan=True)
    # features.2 and .3 end in the 24-channel stage whose channels .3 adds to its input
    stage = plan.groups[plan.group_of("features.3.conv.2")]
    assert {"features.2.conv.2", "features.3.conv.2"} <= set(stage.layers) and stage.channels == 24
    assert new.features[3].conv[2].out_channels == 12 and new.features[4].conv[0][0].in_channels == 12
    # an expansion's channels run through its depthwise convolution, which shrinks with them
    expand = plan.groups["features.2.conv.0.0"]
    assert [s.layer for s in expand.depthwise] == ["features.2.conv.1.0"]
    dw = new.features[2].conv[1][0]
    assert dw.in_channels == dw.out_channels == dw.groups == 48 and dw.weight.shape == (48, 1, 3, 3)
    assert set(plan.skipped) == {"classifier.1"}
    same_outputs(model, new, plan, (2, 3, 32, 32), atol=1e-4)
    torchscript_roundtrip(new, (2, 3, 32, 32), tmp_path)


def test_densenet_concat_members_at_their_offsets(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                     bn_size=2, num_classes=10)).eval()
    new, plan = prune_channels(model, 0.5, "l2", example_input_shape=(3, 32, 32), return_plan=True)
    b1 = "features.denseblock1"
    first = plan.groups[f"{b1}.denselayer1.conv2"]  # its 8 new features sit after the 16 of the stem
    assert (f"{b1}.denselayer2.norm1", 16, 1) in first.bns and ("features.transition1.norm", 16, 1) in first.bns
    assert (f"{b1}.denselayer2.conv1", 16, 1) in first.consumers
    stem = plan.groups["features.conv0"]
    assert (f"{b1}.denselayer2.conv1", 0, 1) in stem.consumers and ("features.norm0", 0, 1) in stem.bns
    assert new.features.transition1.conv.in_channels == (16 + 8 + 8) // 2
    assert new.features.denseblock1.denselayer2.norm1.num_features == 8 + 4
    same_outputs(model, new, plan, (2, 3, 32, 32))
    torchscript_roundtrip(new, (2, 3, 32, 32), tmp_path)


def test_googlenet_branches_feed_the_next_inception_and_the_aux_heads():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.GoogLeNet(num_classes=10, aux_logits=True, init_weights=False)).eval()
    new, plan = prune_channels(model, 0.5, "l1", example_input_shape=(3, 64, 64), return_plan=True)
    branch = plan.groups["inception3a.branch1.conv"]  # the first 64 of the concat's 256 channels
    assert ("inception3b.branch2.0.conv", 0, 1) in branch.consumers
    pool_branch = plan.groups["inception3a.branch4.1.conv"]
    assert ("inception3b.branch1.conv", 64 + 128 + 32, 1) in pool_branch.consumers
    # inception4a's output also feeds the first auxiliary classifier, which runs in training only
    assert ("aux1.conv.conv", 0, 1) in plan.groups["inception4a.branch1.conv"].consumers
    assert new.inception3b.branch1.conv.in_channels == 128
    assert set(plan.skipped) == {"fc", "aux1.fc2", "aux2.fc2"} and "output" in plan.skipped["fc"]
    same_outputs(model, new, plan, (2, 3, 64, 64))
    out = new.train()(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == out.aux_logits1.shape == out.aux_logits2.shape == (2, 10)


class SqueezeExcite(nn.Module):
    """A broadcast multiply ties the gate's channels to the feature map's; a channel shuffle (a
    reshape the tracer does not follow) fixes the channels that go through it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.shuffled = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = 2 * (x * gate)
        y = self.shuffled(x)
        y = y.reshape(-1, 2, 4, y.shape[2], y.shape[3]).transpose(1, 2).reshape(y.shape)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x + y, 1), 1))


def test_broadcast_multiply_and_untraced_reshape():
    torch.manual_seed(0)
    model = SqueezeExcite().eval()
    groups, skipped = find_channel_groups(model, example_input_shape=(3, 6, 6))
    # conv, fc2 (the gate) and shuffled meet; the shuffle's reshape fixes that group
    assert "reshape" in skipped["conv"] or "transpose" in skipped["conv"]
    assert set(skipped) == {"conv", "fc2", "shuffled", "head"} and set(groups) == {"fc1"}
    new, plan = prune_channels(model, 0.5, example_input_shape=(3, 6, 6), return_plan=True)
    assert new.fc1.out_channels == 2 and new.fc2.in_channels == 2
    same_outputs(model, new, plan, (2, 3, 6, 6))


def test_layers_sharing_a_weight_are_left_whole():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 9, 2))
    model[4].weight = model[2].weight
    groups, skipped = find_channel_groups(model, example_input_shape=(3, 3, 3))
    assert not groups and all("shares a parameter" in skipped[n] for n in ("0", "2", "4"))  # "0" feeds "2"
    new = prune_channels(model, 0.5, example_input_shape=(3, 3, 3))
    assert new[2].weight is new[4].weight and new[0].out_channels == 4


def test_readme_call_and_user_errors(resnet18):
    """The README's call (one sample's shape, no batch dimension) works, for slim too; mistakes
    raise DeepcompError with one clear line, with no torch.fx traceback attached."""
    new = prune_channels(resnet18, 0.5, criterion="l1", example_input_shape=(3, 32, 32))
    assert new.conv1.out_channels == 32
    assert not any(m.training for m in resnet18.modules())  # traced in training mode, then restored
    assert slim(resnet18, 0.5, (3, 32, 32)).fc.in_features < 512
    assert prune_channels(resnet18, 0.5, example_input_shape=(1, 3, 32, 32)).conv1.out_channels == 32

    def clean(excinfo):
        e = excinfo.value
        assert isinstance(e, DeepcompError) and e.__cause__ is None and e.__suppress_context__
        assert "\n" not in str(e) and "Traceback" not in str(e) and "While executing" not in str(e)
        return str(e)

    with pytest.raises(InputShapeError) as info:
        prune_channels(resnet18, 0.5, example_input_shape=(32, 32))
    assert "one sample such as (3, 224, 224)" in clean(info)
    with pytest.raises(InputShapeError) as info:
        prune_channels(resnet18, 0.5, example_input_shape="3x224x224")
    clean(info)

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x) if x.mean() > 0 else x

    with pytest.raises(UnsupportedOpError) as info:
        slim(DataDependent(), 0.5, (3, 4, 4))
    assert "torch.fx-traceable" in clean(info)
