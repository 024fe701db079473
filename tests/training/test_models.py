"""The architectures match the paper: parameter counts, multiply-adds, shapes, shortcut options."""

from __future__ import annotations

import pytest
import torch

from training.models import (
    ARCHITECTURES,
    BasicBlock,
    Bottleneck,
    PadShortcut,
    ProjectionShortcut,
    ResNet,
    Shortcut,
    build_model,
    count_multiply_adds,
    count_parameters,
)

# Parameters in millions, as the paper reports them (Table 6 for CIFAR with option A; ImageNet with option B).
PAPER_PARAMETERS = {
    "resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
    "resnet110": 1.7, "resnet1202": 19.4,
    "resnet18": 11.7, "resnet34": 21.8, "resnet50": 25.6, "resnet101": 44.5, "resnet152": 60.2,
}  # fmt: skip
# Multiply-adds in billions at 224x224, Table 1 ("FLOPs").
PAPER_MULTIPLY_ADDS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


@pytest.mark.parametrize("arch", sorted(PAPER_PARAMETERS))
def test_parameter_counts_match_the_paper(arch: str) -> None:
    millions = count_parameters(build_model(arch)) / 1e6
    decimals = 2 if millions < 1 else 1
    assert round(millions, decimals) == PAPER_PARAMETERS[arch]


@pytest.mark.parametrize("arch", sorted(PAPER_MULTIPLY_ADDS))
def test_multiply_adds_match_table_1(arch: str) -> None:
    billions = count_multiply_adds(build_model(arch, stride_in="1x1"), 224) / 1e9
    assert billions == pytest.approx(PAPER_MULTIPLY_ADDS[arch], rel=0.02)  # the paper rounds loosely


def test_stride_in_3x3_costs_more_as_in_torchvision() -> None:
    original = count_multiply_adds(build_model("resnet50", stride_in="1x1"), 224)
    torchvision_style = count_multiply_adds(build_model("resnet50", stride_in="3x3"), 224)
    assert round(torchvision_style / 1e9, 2) == 4.09
    assert torchvision_style > original


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_shape_of_every_architecture(arch: str) -> None:
    spec = ARCHITECTURES[arch]
    size = 32 if spec.family == "cifar" else 64  # ImageNet nets are fully convolutional up to the pooling
    model = build_model(arch, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert spec.depth == int(arch.removeprefix("resnet").removeprefix("plain"))


def _shortcuts(model: torch.nn.Module) -> list[torch.nn.Module | None]:
    return [m.shortcut for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]


def test_option_a_is_parameter_free_and_pads_channels() -> None:
    model = build_model("resnet20", shortcut="A")
    shortcuts = _shortcuts(model)
    assert sum(isinstance(s, PadShortcut) for s in shortcuts) == 2  # the two width changes, 16->32->64
    assert all(isinstance(s, PadShortcut | torch.nn.Identity) for s in shortcuts)
    x = torch.randn(1, 16, 32, 32)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (1, 32, 16, 16)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()


def test_option_b_projects_only_where_dimensions_change_and_c_everywhere() -> None:
    b, c = (
        _shortcuts(build_model("resnet34", shortcut="B")),
        _shortcuts(build_model("resnet34", shortcut="C")),
    )
    assert sum(isinstance(s, ProjectionShortcut) for s in b) == 3
    assert all(isinstance(s, ProjectionShortcut) for s in c) and len(c) == 16
    options: tuple[Shortcut, ...] = ("A", "B", "C")
    params = [count_parameters(build_model("resnet34", shortcut=o)) for o in options]
    assert params[0] < params[1] < params[2]


def test_plain_nets_have_no_shortcuts() -> None:
    assert all(s is None for s in _shortcuts(build_model("plain34")))
    assert all(s is None for s in _shortcuts(build_model("plain20")))


def first_block_of_stage_2(model: ResNet) -> Bottleneck:
    stage = model.stages[1]
    assert isinstance(stage, torch.nn.Sequential)
    block = stage[0]
    assert isinstance(block, Bottleneck)
    return block


def test_stride_placement_in_bottleneck() -> None:
    original = first_block_of_stage_2(build_model("resnet50", stride_in="1x1"))
    torchvision_style = first_block_of_stage_2(build_model("resnet50", stride_in="3x3"))
    assert original.conv1.stride == (2, 2) and original.conv2.stride == (1, 1)
    assert torchvision_style.conv1.stride == (1, 1) and torchvision_style.conv2.stride == (2, 2)


def test_bad_names_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet21")
    with pytest.raises(ValueError, match="shortcut option"):
        build_model("resnet20", shortcut="D")  # type: ignore[arg-type]


def test_architecture_table_command_lists_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    from training.models import main

    main()
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in ARCHITECTURES)
    assert "0.27M" in out and "25.56M" in out and "3.858G" in out
