import pytest

from zerotrain import UserError
from zerotrain.distributed import launcher_command


def test_launcher_uses_the_deepspeed_runner_without_local_rank_argument():
    cmd = launcher_command(2, ["train", "c.toml"], env={})
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_gpus") + 1] == "2" and "--no_local_rank" in cmd
    assert cmd[-4:] == ["--module", "zerotrain", "train", "c.toml"]


def test_launcher_keeps_to_cuda_visible_devices():
    cmd = launcher_command(2, ["train", "c.toml"], env={"CUDA_VISIBLE_DEVICES": "4,5,6"})
    assert "--num_gpus" not in cmd and cmd[cmd.index("--include") + 1] == "localhost:4,5"
    with pytest.raises(UserError, match="lists 3 GPUs"):
        launcher_command(4, ["train"], env={"CUDA_VISIBLE_DEVICES": "4,5,6"})
