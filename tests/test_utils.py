"""Batching order, atomic writes and precision selection (collate: tests/test_collate.py)."""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import utils
from engine.trainer import epoch_batches, linear_schedule


def test_epoch_batches_are_a_reproducible_partition():
    lengths = np.random.default_rng(0).integers(10, 500, size=103)
    for bucketing in (False, True):
        a = epoch_batches(lengths, 4, seed=1, epoch=2, bucketing=bucketing)
        assert a == epoch_batches(lengths, 4, seed=1, epoch=2, bucketing=bucketing)
        assert sorted(i for b in a for i in b) == list(range(103))
        assert a != epoch_batches(lengths, 4, seed=1, epoch=3, bucketing=bucketing)
    bucketed = epoch_batches(lengths, 4, seed=1, epoch=0, bucketing=True)
    plain = epoch_batches(lengths, 4, seed=1, epoch=0)
    spread = lambda bs: np.mean([np.ptp(lengths[b]) for b in bs])  # noqa: E731
    assert spread(bucketed) < spread(plain) / 3


def test_linear_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "result.json"
    utils.atomic_write_json(path, [1, 2])
    with pytest.raises(RuntimeError):
        with utils.atomic_path(path) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_amp_dtype_choices():
    cpu = torch.device("cpu")
    assert utils.amp_dtype(cpu, "auto") is None
    assert utils.amp_dtype(cpu, "off") is None
    assert utils.amp_dtype(cpu, "bf16") is torch.bfloat16
    assert utils.amp_dtype(cpu, "fp16") is torch.float16
    with pytest.raises(ValueError, match="--amp"):
        utils.amp_dtype(cpu, "fp8")


def test_cpu_bf16_units_as_the_kernel_reports_them():
    """The `--amp bf16` hint on CPU follows the amx_bf16 flag of /proc/cpuinfo (Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this OS")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    assert utils.cpu_multiplies_bf16() == ("amx_bf16" in flags)


def test_onednn_cache_capacity_is_a_default_the_environment_overrides(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    utils.cap_onednn_cache(64)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    utils.cap_onednn_cache(64)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


def test_resolve_model_path(minilm_path):
    assert utils.resolve_model_path("minilm") == minilm_path
    assert utils.resolve_model_path(None) == minilm_path
    assert utils.resolve_model_path("roberta-large") == "roberta-large"


def test_mmap_threshold_is_set_through_glibc_or_declined():
    assert utils.set_mmap_threshold(0) is False  # 0 leaves malloc alone
    if not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        pytest.skip("glibc's malloc only")
    try:
        assert utils.set_mmap_threshold(1) is True
        block = np.ones(4 * 2 ** 20 // 8)  # served by its own mapping now; allocation still works
        assert block.sum() == len(block)
    finally:
        utils.set_mmap_threshold(32)  # glibc's ceiling of its dynamic threshold


def test_select_device_refuses_unknown_names_and_missing_gpus():
    UserError, select_device = utils.UserError, utils.select_device
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device gpu: not a device name"):
        select_device("gpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UserError, match="no CUDA device" if count == 0 else f"has {count} CUDA device"):
        select_device(f"cuda:{count}")


def test_number_flags_take_their_range_and_give_argparse_errors(capsys):
    import argparse

    top_k = utils.number_flag(int, 1, off=-1, off_means="all")
    assert (utils.COUNT("1"), utils.BELOW_ONE("0"), utils.POSITIVE("1e-8"), top_k("-1")) == (1, 0.0, 1e-8, -1)
    assert isinstance(utils.COUNT("3"), int) and utils.FRACTION("1") == 1.0
    for flag_type, value, message in [(utils.COUNT, "0", "must be >= 1, got 0"),
                                      (utils.COUNT, "1.5", "must be an integer >= 1, got '1.5'"),
                                      (utils.BELOW_ONE, "1", "must be in [0, 1), got 1"),
                                      (utils.BELOW_ONE, "nan", "must be in [0, 1), got nan"),
                                      (utils.POSITIVE, "0", "must be > 0, got 0"), (utils.POSITIVE, "inf", "got inf"),
                                      (top_k, "0", "must be >= 1 (or -1: all), got 0")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            flag_type(value)
    parser = argparse.ArgumentParser(prog="t")
    parser.add_argument("--n", type=utils.COUNT)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--n", "0"])
    assert exit_info.value.code == 2 and "t: error: argument --n: must be >= 1, got 0" in capsys.readouterr().err
