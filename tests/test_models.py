import itertools

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from pneumolab.errors import InputError
from pneumolab.models import count_flops, create_model, get_spec, list_models, model_table, register_model

STUDY = {
    "cnn_base",
    "cnn_improved",
    "alexnet_base",
    "alexnet_improved",
    "vgg19",
    "resnet34",
    "densenet121",
    "googlenet",
}


def test_registry_holds_every_model_of_the_study() -> None:
    assert STUDY | {"resnet18", "mobilenet_v3_small", "efficientnet_b0"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes_gradients_and_gradcam_layer(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(2, 1, 64, 64)
    feats = {}
    layer = model.get_submodule(get_spec(name).gradcam_layer)
    layer.register_forward_hook(lambda m, i, o: feats.setdefault("out", o))
    logits = model(x)
    assert logits.shape == (2, 2)
    assert feats["out"].ndim == 4 and feats["out"].shape[-1] >= 1  # (B, C, h, w): a spatial map for Grad-CAM
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert isinstance(model.get_submodule(get_spec(name).first_conv), nn.Conv2d)
    assert model.get_submodule(get_spec(name).first_conv).in_channels == 1


def _conv(cin, cout, k):  # parameters of Conv2d(cin, cout, k) with bias
    return cin * cout * k * k + cout


def _linear(i, o):
    return i * o + o


def test_alexnet_base_is_exactly_the_printed_structure() -> None:
    m = create_model("alexnet_base")
    convs = [(1, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
    for idx, (cin, cout, k, s, p) in zip([0, 3, 6, 8, 10], convs, strict=True):
        layer = m.features[idx]
        assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding) == (
            cin,
            cout,
            (k, k),
            (s, s),
            (p, p),
        )
    assert [type(m.features[i]).__name__ for i in (2, 5, 12)] == ["MaxPool2d"] * 3
    assert all(m.features[i].kernel_size == 3 and m.features[i].stride == 2 for i in (2, 5, 12))
    assert m.avgpool.output_size == (6, 6)
    fcs = [(m.classifier[i].in_features, m.classifier[i].out_features) for i in (1, 4, 6)]
    assert fcs == [(9216, 4096), (4096, 4096), (4096, 2)]
    assert [m.classifier[i].p for i in (0, 3)] == [0.5, 0.5]
    expected = sum(_conv(a, b, k) for a, b, k, _, _ in convs) + sum(_linear(i, o) for i, o in fcs)
    assert expected == 56_996_546 == sum(p.numel() for p in m.parameters())


def test_alexnet_improved_is_exactly_the_printed_structure() -> None:
    m = create_model("alexnet_improved")
    convs = [(1, 32, 11, 4, 2), (32, 64, 5, 1, 2), (64, 128, 3, 1, 1)]
    for idx, (cin, cout, k, s, p) in zip([0, 3, 6], convs, strict=True):
        layer = m.features[idx]
        assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding) == (
            cin,
            cout,
            (k, k),
            (s, s),
            (p, p),
        )
    assert len(m.features) == 9 and type(m.features[8]).__name__ == "MaxPool2d"
    fcs = [(m.classifier[i].in_features, m.classifier[i].out_features) for i in (1, 4, 6)]
    assert fcs == [(4608, 1024), (1024, 512), (512, 2)]
    expected = sum(_conv(a, b, k) for a, b, k, _, _ in convs) + sum(_linear(i, o) for i, o in fcs)
    assert expected == sum(p.numel() for p in m.parameters())


def test_flops_match_a_hand_count() -> None:
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert count_flops(conv, 8) == 2 * 4 * 9 * 8 * 8  # 2 per multiply-add, 4 maps of 8x8, 3x3 kernel


def test_the_model_table_counts_on_meta_tensors_what_real_models_have() -> None:
    """``pneumolab models`` builds no weights; its counts must still be the real models'."""
    rows = {r["name"]: r for r in model_table(64)}
    assert set(rows) == set(list_models())
    for name in ("cnn_improved", "alexnet_improved", "resnet18"):
        real = create_model(name)
        assert rows[name]["params"] == sum(p.numel() for p in real.parameters())
        assert rows[name]["gflops"] == pytest.approx(count_flops(real, 64) / 1e9)
    small = {r["name"]: r for r in model_table(16)}
    assert small["alexnet_base"]["gflops"] is None  # its pooling leaves nothing of a 16 px image
    assert small["cnn_improved"]["gflops"] == pytest.approx(count_flops(create_model("cnn_improved"), 16) / 1e9)


def test_cnn_improved_width_and_group_norm() -> None:
    def params(m):
        return sum(p.numel() for p in m.parameters())

    # Conv3x3 without bias + a norm layer's 2 x C affine parameters, 2 convs per block, then Linear(8w, 2).
    def hand(w):
        chans = [1, w, 2 * w, 4 * w, 8 * w]
        convs = sum(a * b * 9 + 2 * b + b * b * 9 + 2 * b for a, b in itertools.pairwise(chans))
        return convs + _linear(8 * w, 2)

    base, wide = create_model("cnn_improved"), create_model("cnn_improved", width=32, norm="group", dropout=0.0)
    assert params(base) == hand(16) and params(wide) == hand(32)
    assert isinstance(wide.features[0][1], nn.GroupNorm) and wide.features[0][1].num_groups == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in wide.modules())
    # Group norm makes each image's output independent of the rest of the batch, even in training mode.
    x = torch.randn(4, 1, 32, 32)
    assert torch.allclose(wide.train()(x)[:1], wide(x[:1]), atol=1e-5)
    with pytest.raises(InputError, match="width must be a multiple of 8"):
        create_model("cnn_improved", width=12)
    with pytest.raises(InputError, match="norm must be 'batch' or 'group'"):
        create_model("cnn_improved", norm="layer")


def test_cnn_improved_stem_stride_downsamples_in_the_first_convolution() -> None:
    base, stem = create_model("cnn_improved"), create_model("cnn_improved", stem_stride=2)
    assert [p.shape for p in stem.parameters()] == [p.shape for p in base.parameters()]  # the same weights
    x = torch.randn(2, 1, 64, 64)
    # (2, 16, 32, 32) out of the first block either way: halved by the first convolution instead of the pool
    assert stem.features[0](x).shape == base.features[0](x).shape == (2, 16, 32, 32)
    assert stem.features[0][0].stride == (2, 2) and stem.features[0][3].stride == (1, 1)
    # the first block's two convolutions (1 -> 16, 16 -> 16) on a 32 x 32 map instead of 64 x 64: 3/4 of them saved
    first_block = 2 * (64 * 64) * 16 * 9 * (1 + 16)
    assert count_flops(base, 64) - count_flops(stem, 64) == 0.75 * first_block
    with pytest.raises(InputError, match="stem_stride must be 1 or 2, got 3"):
        create_model("cnn_improved", stem_stride=3)


def test_dropout_before_the_head() -> None:
    m = create_model("resnet34", dropout=0.5)
    assert isinstance(m.fc, nn.Sequential) and m.fc[0].p == 0.5 and m.fc[1].out_features == 2
    assert isinstance(create_model("resnet34").fc, nn.Linear)


def test_local_imagenet_weights_are_loaded_and_the_stem_summed(tmp_path) -> None:
    torch.manual_seed(0)
    ref = tvm.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    m = create_model("resnet18", weights=path)
    assert torch.allclose(m.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(m.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    gray = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # same stem response to a gray image as the RGB stem to its 3-channel copy
        assert torch.allclose(m.conv1(gray), ref.conv1(gray.repeat(1, 3, 1, 1)), atol=1e-5)


def test_googlenet_weights_with_aux_heads_load(tmp_path) -> None:
    path = tmp_path / "googlenet.pth"
    torch.save(tvm.googlenet(aux_logits=True, init_weights=False).state_dict(), path)
    assert create_model("googlenet", weights=path)(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


def test_bad_weights_are_clear_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="file not found"):
        create_model("resnet18", weights=tmp_path / "nope.pth")
    wrong = tmp_path / "r34.pth"
    torch.save(tvm.resnet34().state_dict(), wrong)
    with pytest.raises(InputError, match="does not match resnet18"):
        create_model("resnet18", weights=wrong)
    junk = tmp_path / "junk.pth"
    junk.write_text("not torch")
    with pytest.raises(InputError, match="not a readable"):
        create_model("resnet18", weights=junk)
    with pytest.raises(InputError, match="no ImageNet weights"):
        create_model("cnn_base", weights=wrong)


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(InputError, match=r"unknown model 'resnet99'.*resnet18"):
        create_model("resnet99")
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18", input_size=1, gradcam_layer="", classifier="", first_conv="", description="")(
            lambda **kw: nn.Identity()
        )
