"""Frozen encoders: shapes/dtypes, input handling, frozenness, and the weights-loading paths."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from torchrl_rise.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenEncoder,
    PixelPreprocessor,
    WeightsFileError,
    WeightsUnavailableError,
    available_encoders,
    make_encoder,
)

IMAGE_ENCODERS = {
    "resnet18": (dict(weights="random"), 512),
    "efficientnet_b0": (dict(weights="random"), 1280),
    "downsample": (dict(size=8), 64),
    "random_projection": (dict(embedding_dim=48, size=12), 48),
}


@pytest.fixture(scope="module")
def resnet() -> FrozenEncoder:
    return make_encoder("resnet18", weights="random", seed=0)


def _pixels(*lead: int, channels: int = 4, size: int = 36, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*lead, channels, size, size), dtype=torch.uint8, generator=g)


def test_registry_lists_every_encoder() -> None:
    assert available_encoders() == [
        "downsample",
        "efficientnet_b0",
        "online",
        "random_projection",
        "resnet18",
    ]
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet50'.*available: downsample"):
        make_encoder("resnet50")
    with pytest.raises(TypeError, match=r"make_encoder\('downsample'.*bogus"):
        make_encoder("downsample", bogus=1)


@pytest.mark.parametrize("name", sorted(IMAGE_ENCODERS))
def test_shapes_and_dtypes_for_any_leading_dims(name: str) -> None:
    options, dim = IMAGE_ENCODERS[name]
    enc = make_encoder(name, **options)
    assert enc.embedding_dim == dim
    x = _pixels(2, 3)
    out = enc(x)
    assert out.shape == (2, 3, dim) and out.dtype == torch.float32
    assert not out.requires_grad
    # no batch dim, and one flat batch: same numbers
    single = enc(x[1, 2])
    assert single.shape == (dim,)
    # batch-size-dependent kernels: one of efficientnet_b0's 1280 values differed by 2.2e-3
    # under torch 2.11
    torch.testing.assert_close(single, out[1, 2], rtol=2e-3, atol=5e-3)
    # float input in [0, 1] gives the same embedding as uint8
    torch.testing.assert_close(enc(x.float() / 255), out, rtol=2e-3, atol=2e-3)
    # channels-last input
    enc_last = make_encoder(name, channels_last=True, **options)
    torch.testing.assert_close(enc_last(x.permute(0, 1, 3, 4, 2)), out, rtol=2e-3, atol=2e-3)
    # empty batch
    assert enc(x[:0]).shape == (0, 3, dim)
    described = enc.describe()
    assert described["name"] == name and described["embedding_dim"] == dim
    assert described["weights"] == enc.weights_source


@pytest.mark.parametrize("name", sorted(IMAGE_ENCODERS))
def test_rgb_frames(name: str) -> None:
    options, dim = IMAGE_ENCODERS[name]
    enc = make_encoder(name, frame_channels=3, **options)
    expected_dim = dim * 3 if name == "downsample" else dim
    assert enc.embedding_dim == expected_dim
    assert enc(_pixels(5, channels=12)).shape == (5, expected_dim)


def test_only_the_selected_frame_matters() -> None:
    enc = make_encoder("downsample", size=6, frame_index=-1)
    x = _pixels(3)
    y = x.clone()
    y[:, :3] = 255 - y[:, :3]  # older frames changed
    assert torch.equal(enc(x), enc(y))
    y[:, 3] = 255 - y[:, 3]  # newest frame changed
    assert not torch.equal(enc(x), enc(y))
    oldest = make_encoder("downsample", size=6, frame_index=0)
    assert torch.equal(oldest(x), enc(x[:, :1].expand(-1, 4, -1, -1)))


def test_downsample_is_an_area_resize() -> None:
    x = _pixels(2, size=84)
    enc = make_encoder("downsample", size=21)
    expected = F.avg_pool2d(x[:, -1:].float() / 255, kernel_size=4).flatten(1)
    torch.testing.assert_close(enc(x), expected)


def test_preprocessor_grayscale_to_rgb_resize_and_imagenet_normalisation() -> None:
    pre = PixelPreprocessor(frame_channels=1, to_rgb=True, resize=(10, 12), imagenet_normalize=True)
    x = torch.full((2, 4, 40, 48), 128, dtype=torch.uint8)
    out = pre(x)
    assert out.shape == (2, 3, 10, 12) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 3, 5], expected)
    # upsampling goes through bilinear interpolation, shapes still right
    assert PixelPreprocessor(resize=64)(x).shape == (2, 1, 64, 64)


def test_grayscale_is_replicated_to_three_channels(resnet: FrozenEncoder) -> None:
    rgb = make_encoder("resnet18", weights="random", seed=0, frame_channels=3)
    gray = _pixels(4, channels=2)
    replicated = gray.repeat_interleave(3, dim=1)  # two RGB frames whose channels are equal
    torch.testing.assert_close(resnet(gray), rgb(replicated))


def test_bad_inputs_give_clear_errors(resnet: FrozenEncoder) -> None:
    with pytest.raises(TypeError, match=r"uint8.*floating point"):
        resnet(torch.zeros(2, 4, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"at least 3 dims"):
        resnet(torch.zeros(32, 32, dtype=torch.uint8))
    rgb = make_encoder("downsample", frame_channels=3)
    with pytest.raises(ValueError, match=r"not a multiple of frame_channels=3.*channels_last"):
        rgb(torch.zeros(2, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(IndexError, match=r"frame_index=5 is out of range for a stack of 4"):
        make_encoder("downsample", frame_index=5)(_pixels(1))
    with pytest.raises(ValueError, match=r"frame_channels=2"):
        make_encoder("resnet18", weights="random", frame_channels=2)
    with pytest.raises(ValueError, match=r"no pretrained weights"):
        make_encoder("downsample", weights="imagenet")
    with pytest.raises(ValueError, match=r"size must be a positive int"):
        make_encoder("downsample", size=(4, 4, 4))


def test_encoders_are_frozen_and_stay_in_eval_mode(resnet: FrozenEncoder) -> None:
    for name, (options, _) in IMAGE_ENCODERS.items():
        enc = make_encoder(name, **options)
        assert all(not p.requires_grad for p in enc.parameters()), name
        assert not enc.training
    parent = nn.ModuleDict({"encoder": resnet, "head": nn.Linear(512, 2)})
    parent.train()
    assert not resnet.training and parent["head"].training
    bn = resnet.backbone.bn1
    before = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    x = _pixels(3).float().div(255).requires_grad_()
    out = resnet(x)
    assert not out.requires_grad  # no autograd through the encoder, even for inputs needing grad
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(
        bn.num_batches_tracked, before[1]
    )


def test_training_step_leaves_encoder_untouched_and_out_of_the_optimizer(
    resnet: FrozenEncoder,
) -> None:
    head = nn.Linear(512, 3)
    model = nn.ModuleDict({"encoder": resnet, "head": head})
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    in_optim = {id(p) for group in optim.param_groups for p in group["params"]}
    assert in_optim == {id(p) for p in head.parameters()}
    assert not in_optim & {id(p) for p in resnet.parameters()}

    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    head_before = head.weight.detach().clone()
    x = _pixels(8)
    loss = head(resnet(x)).pow(2).mean()
    loss.backward()
    optim.step()
    assert not torch.equal(head.weight, head_before)  # the step did train something
    assert all(p.grad is None for p in resnet.parameters())
    for k, v in resnet.state_dict().items():
        assert torch.equal(v, before[k]), k
    # even an optimizer over *all* parameters cannot move them: they never get a gradient
    optim_all = torch.optim.SGD(model.parameters(), lr=1.0)
    optim_all.zero_grad()
    head(resnet(x)).sum().backward()
    optim_all.step()
    for k, v in resnet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_random_weights_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = make_encoder("resnet18", weights="random", seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = make_encoder("resnet18", weights="random", seed=7)
    c = make_encoder("resnet18", weights="random", seed=8)
    x = _pixels(2)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    assert a.weights_source == "random(seed=7)"
    p1 = make_encoder("random_projection", seed=1, embedding_dim=16)
    p2 = make_encoder("random_projection", seed=2, embedding_dim=16)
    assert not torch.allclose(p1(x), p2(x))
    assert p1.weights_source == "random_projection(seed=1)"


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_weights_from_a_state_dict_file(arch: str, tmp_path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(42)
        reference = getattr(torchvision.models, arch)(weights=None)
        for module in reference.modules():  # non-trivial BatchNorm statistics
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)  # full model, classifier keys included
    enc = make_encoder(arch, weights=str(path))
    assert enc.weights_source.startswith(f"file:{path.resolve()} (sha256 ")
    assert enc.describe()["weights"] == enc.weights_source
    head = "fc" if arch == "resnet18" else "classifier"
    setattr(reference, head, nn.Identity())
    reference.eval()
    x = _pixels(2, size=40)
    images = enc.preprocessor(x)
    with torch.no_grad():
        expected = reference(images)
    torch.testing.assert_close(enc(x), expected)
    assert not torch.allclose(enc(x), make_encoder(arch, weights="random", seed=0)(x), atol=0)


def test_weights_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        make_encoder("resnet18", weights=str(missing))

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(WeightsFileError, match=r"weights-only state dict.*corrupt"):
        make_encoder("resnet18", weights=str(corrupt))

    mismatched = tmp_path / "effnet.pth"
    torch.save(torchvision.models.efficientnet_b0(weights=None).state_dict(), mismatched)
    with pytest.raises(WeightsFileError, match=r"does not fit torchvision's resnet18.*missing key"):
        make_encoder("resnet18", weights=str(mismatched))

    wrong_shape = tmp_path / "wrong_shape.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, wrong_shape)
    with pytest.raises(WeightsFileError, match=r"shape mismatch.*conv1.weight"):
        make_encoder("resnet18", weights=str(wrong_shape))

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(WeightsFileError, match=r"does not hold a state dict"):
        make_encoder("resnet18", weights=str(not_a_state_dict))


class _Payload:
    """Unpickling this would run code: weights-only loading must refuse it."""

    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))

    marker = ""


def test_weights_file_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    _Payload.marker = str(marker)
    path = tmp_path / "malicious.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f, protocol=2)
    with pytest.raises(WeightsFileError, match=r"weights-only"):
        make_encoder("resnet18", weights=str(path))
    assert not marker.exists()


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and no network: downloads fail at once with URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def offline_urlopen(*args, **kwargs):
        calls.append(args)
        raise URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "urlopen", offline_urlopen)
    hub = Path(torch.hub.get_dir())
    assert hub.is_relative_to(tmp_path)
    return hub


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_imagenet_offline_raises_naming_both_ways_out(arch: str, offline_hub: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        make_encoder(arch, weights="imagenet")
    message = str(info.value)
    assert str(offline_hub / "checkpoints") in message
    assert "URLError" in message
    assert "weights='/path/to/" in message and "weights='random'" in message


def test_auto_falls_back_to_random_with_a_loud_warning(
    offline_hub: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.warns(UserWarning, match=r"RANDOM weights \(seed=3\)"):
        enc = make_encoder("resnet18", weights="auto", seed=3)
    assert "RANDOM weights" in caplog.text
    assert enc.weights_source == "random(seed=3)"
    assert enc.describe()["requested_weights"] == "auto"
    x = _pixels(2)
    torch.testing.assert_close(enc(x), make_encoder("resnet18", weights="random", seed=3)(x))


def test_imagenet_from_the_hub_cache(offline_hub: Path) -> None:
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = offline_hub / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the cache is used
        explicit = make_encoder("resnet18", weights="imagenet")
        auto = make_encoder("resnet18", weights="auto")
    assert explicit.weights_source.startswith("imagenet:ResNet18_Weights.IMAGENET1K_V1")
    assert auto.weights_source == explicit.weights_source
    from_file = make_encoder("resnet18", weights=str(cached))
    x = _pixels(2)
    torch.testing.assert_close(explicit(x), from_file(x))


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels
        return torch.relu(self.bn(self.conv(x))).mean(dim=(-1, -2))


def test_online_encoder_uses_current_weights_without_gradient() -> None:
    cnn = _TinyCNN()
    cnn.train()
    enc = make_encoder("online", module=cnn, input_shape=(4, 20, 20))
    assert enc.embedding_dim == 6
    assert enc.describe()["weights"].startswith("online")
    x = _pixels(3, 2, size=20)
    bn_stats = cnn.bn.running_mean.clone()
    first = enc(x)
    assert first.shape == (3, 2, 6) and not first.requires_grad
    assert cnn.training  # mode restored
    assert torch.equal(cnn.bn.running_mean, bn_stats)  # eval mode during collection
    assert all(p.requires_grad for p in cnn.parameters())  # the agent's parameters stay learnable
    assert list(enc.parameters()) == []  # not a submodule: never in the optimizer twice
    with torch.no_grad():
        cnn.conv.bias.add_(1.0)  # an optimizer step on the agent's CNN
    assert not torch.allclose(enc(x), first)  # the next embedding uses the new weights
    expected = cnn.eval()(x.flatten(0, 1)).reshape(3, 2, 6)
    torch.testing.assert_close(enc(x), expected.detach())


def test_online_encoder_errors() -> None:
    with pytest.raises(TypeError, match=r"needs the agent's CNN"):
        make_encoder("online")
    with pytest.raises(ValueError, match=r"embedding_dim=... or input_shape"):
        make_encoder("online", module=_TinyCNN())
    with pytest.raises(TypeError, match=r"not supported by the online encoder"):
        make_encoder("online", module=_TinyCNN(), embedding_dim=6, resize=32)
    enc = make_encoder("online", module=_TinyCNN(), embedding_dim=7)
    with pytest.raises(RuntimeError, match=r"returned shape \(2, 6\), expected \[2, 7\]"):
        enc(_pixels(2, size=20))


def test_chunked_encoding_matches_one_batch() -> None:
    x = _pixels(10)
    whole = make_encoder("random_projection", embedding_dim=8, chunk_size=None)(x)
    chunked = make_encoder("random_projection", embedding_dim=8, chunk_size=3)(x)
    torch.testing.assert_close(whole, chunked)


# ---------------------------------------------------------------- faster variants (fuse/bf16/int8)
VARIANTS = {
    "fuse": (dict(fuse=True), 0.99999),
    "bf16": (dict(precision="bf16"), 0.999),
    "int8": (dict(precision="int8", calibration_size=32), 0.98),
}


def _atari_like(n: int, seed: int = 1) -> torch.Tensor:
    """Stacks of 4 synthetic Atari-like 36x36 frames (the newest is the one encoded)."""
    from torchrl_rise.encoders.optimize import synthetic_frames

    return synthetic_frames(4 * n, size=36, seed=seed).reshape(n, 4, 36, 36)


def _cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_stay_close_to_fp32_and_frozen(variant: str, resnet: FrozenEncoder) -> None:
    options, min_cosine = VARIANTS[variant]
    enc = make_encoder("resnet18", weights="random", seed=0, **options)
    x = _atari_like(6)
    out, ref = enc(x), resnet(x)
    assert out.shape == ref.shape == (6, 512) and out.dtype == torch.float32
    assert _cosine_min(out, ref) > min_cosine
    if variant != "fuse":  # a different arithmetic, not the same numbers
        assert not torch.equal(out, ref)
    assert not out.requires_grad and not out.is_inference()
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.backbone.training
    description = enc.describe()
    assert description["precision"] == options.get("precision", "fp32")
    # int8 folds BatchNorm as part of quantisation
    assert description["fuse"] is (variant != "bf16")
    assert enc.describe()["weights"] == "random(seed=0)"


@pytest.mark.parametrize(
    "variant",
    # every variant is applied after the weights are loaded (one code path): int8, the one with
    # its own rebuild path, in the default suite, the others with -m slow
    [
        pytest.param("bf16", marks=pytest.mark.slow),
        pytest.param("fuse", marks=pytest.mark.slow),
        "int8",
    ],
)
def test_every_weights_path_works_with_every_variant(
    variant: str, tmp_path: Path, offline_hub: Path
) -> None:
    options, min_cosine = VARIANTS[variant]
    # these weights (torchvision's init, BatchNorm statistics at their defaults) are harder for
    # int8 than calibrated ones; what is checked here is that each path loads the same weights
    min_cosine = min(min_cosine, 0.95)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        state = torchvision.models.resnet18(weights=None).state_dict()
    weights_file = tmp_path / "r18.pt"
    torch.save(state, weights_file)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = offline_hub / "checkpoints" / url.rsplit("/", 1)[-1]
    x = _atari_like(4, seed=2)
    # the hub cache is empty first: "auto" falls back to random, "imagenet" fails as in fp32
    with pytest.warns(UserWarning, match=r"RANDOM weights"):
        auto = make_encoder("resnet18", weights="auto", seed=4, **options)
    assert auto.weights_source == "random(seed=4)"
    reference = make_encoder("resnet18", weights="random", seed=4)
    assert _cosine_min(auto(x), reference(x)) > min_cosine
    with pytest.raises(WeightsUnavailableError):
        make_encoder("resnet18", weights="imagenet", **options)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, cached)
    for weights in (str(weights_file), "imagenet"):
        enc = make_encoder("resnet18", weights=weights, **options)
        fp32 = make_encoder("resnet18", weights=weights)
        assert enc.weights_source == fp32.weights_source
        assert _cosine_min(enc(x), fp32(x)) > min_cosine
    # the variant really carries the file's weights: far from another init
    far = _cosine_min(enc(x), reference(x))
    assert far < min_cosine


def test_int8_calibration_frames_and_option_errors() -> None:
    from torchrl_rise.encoders.optimize import synthetic_frames

    frames = _atari_like(20, seed=3)
    enc = make_encoder("resnet18", weights="random", precision="int8", calibration_frames=frames)
    assert enc.describe()["calibration"] == "given(20 frames)"
    assert enc.describe()["quantized_engine"] in torch.backends.quantized.supported_engines
    assert _cosine_min(enc(frames), make_encoder("resnet18", weights="random")(frames)) > 0.98
    assert enc.follows_data_device is False  # int8 kernels are CPU-only
    # quantised FX modules do not pickle; the encoder does (rebuilt: ParallelEnv workers, saves)
    clone = pickle.loads(pickle.dumps(enc))
    assert torch.equal(clone(frames), enc(frames)) and clone.describe() == enc.describe()
    with pytest.raises(RuntimeError, match=r"CPU only"):
        enc.encode(torch.zeros(1, 3, 36, 36, device="meta"))
    with pytest.raises(ValueError, match=r"precision must be one of 'fp32', 'bf16', 'int8'"):
        make_encoder("resnet18", weights="random", precision="fp16")
    with pytest.raises(ValueError, match=r"calibration_frames calibrates an int8 encoder"):
        make_encoder("resnet18", weights="random", calibration_frames=frames)
    with pytest.raises(ValueError, match=r"int8' is offered for resnet18 only"):
        make_encoder("efficientnet_b0", weights="random", precision="int8")
    # synthetic calibration frames: seeded, uint8, flat areas with edges (not uniform noise)
    a, b = synthetic_frames(3, seed=7), synthetic_frames(3, seed=7)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == (3, 1, 84, 84)
    assert not torch.equal(a, synthetic_frames(3, seed=8))
    for frame in a:
        assert frame.unique().numel() <= 10  # a background and a few rectangles


def test_only_the_selected_uint8_frame_reaches_the_encoder_device(resnet: FrozenEncoder) -> None:
    seen: list[tuple[torch.dtype, tuple[int, ...]]] = []
    convert = resnet.preprocessor.convert_frames

    def recording(frames: torch.Tensor) -> torch.Tensor:
        seen.append((frames.dtype, tuple(frames.shape)))
        return convert(frames)

    resnet.preprocessor.convert_frames = recording
    try:
        out = resnet(_pixels(2, 3), out_dtype=torch.float16)
    finally:
        del resnet.preprocessor.convert_frames
    assert seen == [(torch.uint8, (6, 1, 36, 36))]  # the newest frame, not the 4-frame stack
    assert out.dtype == torch.float16 and out.shape == (2, 3, 512)
    torch.testing.assert_close(out, resnet(_pixels(2, 3)).half(), rtol=0, atol=0)
