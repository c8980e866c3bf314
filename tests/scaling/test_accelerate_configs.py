"""The shipped accelerate configs parse and resolve to the launch they promise, without CUDA."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
EXPECTED = {  # file -> (use_deepspeed, use_fsdp, multi_gpu, zero stage, fsdp version)
    "ddp.yaml": (False, False, True, None, None),
    "deepspeed-zero2.yaml": (True, False, False, 2, None),
    "deepspeed-zero3.yaml": (True, False, False, 3, None),
    "fsdp.yaml": (False, True, False, None, 2),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_resolves(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = CONFIGS / name
    text = path.read_text()
    assert text.startswith("# ") and "Use it" in text.split("compute_environment")[0]  # says when to use it
    cfg = load_config_from_file(str(path))
    assert cfg.mixed_precision == "bf16" and cfg.num_processes == 8 and cfg.num_machines == 1
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args = _validate_launch_command(args)[0]  # what `accelerate launch --config_file` would run
    deepspeed, fsdp, multi_gpu, stage, version = EXPECTED[name]
    assert (bool(args.use_deepspeed), bool(args.use_fsdp), bool(args.multi_gpu)) == (deepspeed, fsdp, multi_gpu)
    assert args.mixed_precision == "bf16" and args.num_processes == 8
    if deepspeed:
        assert int(args.zero_stage) == stage and float(args.gradient_clipping) == 1.0
        assert int(args.gradient_accumulation_steps) == 1  # tether accumulates; DeepSpeed must not again
    if fsdp:
        assert int(args.fsdp_version) == version


def test_every_shipped_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
