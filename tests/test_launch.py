"""zerotrain launch: hostfile and host validation, the three generated launches, and real runs — the DeepSpeed
launcher from a one-node hostfile, and two "nodes" made of Linux network namespaces talking gloo over a veth pair,
each started with its line of the generated torchrun commands. Both train ZeRO-2 to the losses of the single-host
2-process run."""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest

from zerotrain import UserError, launch

from conftest import REPO, assert_clean_failure, run_ok, train_losses, write_config, zerotrain


def never_resolve(host, _port):
    raise AssertionError(f"{host} was looked up")


def fake_resolve(known):
    def resolve(host, _port):
        if host not in known:
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (known[host], 0))]

    return resolve


# ------------------------------------------------------------------------------------------------ validation


def test_hostfile_with_comments(tmp_path):
    hf = tmp_path / "hostfile"
    hf.write_text("# the cluster\n\nnode-a slots=8\nnode-b   slots=8  # spare PSU\n")
    assert launch.parse_hostfile(hf) == [launch.Host("node-a", 8, 3), launch.Host("node-b", 8, 4)]


def test_hostfile_reports_every_bad_line_by_number(tmp_path):
    hf = tmp_path / "hostfile"
    hf.write_text("node-a slots=8\nnode-b slots=eight\nnode-c\nnode-a slots=4\nnode-d slots=0\n")
    with pytest.raises(UserError) as e:
        launch.parse_hostfile(hf)
    msg = str(e.value)
    assert f"{hf}:2: 'node-b slots=eight' is not `HOSTNAME slots=N`" in msg and f"{hf}:3:" in msg
    assert "4: node-a is listed again (first on line 1)" in msg and "5: node-d has slots=0" in msg


def test_hosts_that_do_not_resolve_and_slots_below_gpus():
    hosts = [launch.Host("node-a", 8, 1), launch.Host("node-b", 4, 2), launch.Host("nowhere", 8, 3)]
    with pytest.raises(UserError) as e:
        launch.check_hosts(hosts, 8, fake_resolve({"node-a": "10.0.0.1", "node-b": "10.0.0.2"}), set())
    msg = str(e.value)
    assert "host nowhere (line 3) does not resolve" in msg
    assert "--gpus-per-node 8 but node-b has slots=4 (line 2); lower --gpus-per-node to 4" in msg


def test_gpus_per_node_above_the_gpus_of_this_host():
    with pytest.raises(UserError, match="this host \\(me\\) has 2 GPUs"):
        launch.check_hosts([launch.Host("me", None)], 4, fake_resolve({"me": "10.0.0.9"}), {"10.0.0.9"}, gpus_here=2)


def test_loopback_host_in_a_multi_node_list():
    with pytest.raises(UserError, match="localhost is a loopback address"):
        launch.check_hosts(
            [launch.Host("localhost", None), launch.Host("node-b", None)],
            1,
            fake_resolve({"localhost": "127.0.0.1", "node-b": "10.0.0.2"}),
            set(),
        )


def test_port_in_use_on_the_local_master():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"--master-port {port} is in use"):
            launch.check_port("localhost", port, launch.local_addresses())
        launch.check_port(
            "10.255.0.1", port, launch.local_addresses(), fake_resolve({"10.255.0.1": "10.255.0.1"})
        )  # not us: unchecked


# ------------------------------------------------------------------------------------------------ generated launches


def plan(tmp_path, launcher, env=None, runner="pdsh", **kw):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=tmp_path / "data")
    args = {
        "hostfile": None,
        "hosts": "node-a,node-b",
        "gpus_per_node": 4,
        "launcher": launcher,
        "port": 29511,
        "zt_args": ["train", str(cfg), "--train.lr", "1e-3"],
        "out": tmp_path / "out",
        "runner": runner,
        "env": env or {},
        "resolve": fake_resolve({"node-a": "10.0.0.1", "node-b": "10.0.0.2"}),
    }
    return launch.plan_launch(**(args | kw))


def test_deepspeed_launch_with_environment_file(tmp_path):
    p = plan(
        tmp_path,
        "deepspeed",
        env={"NCCL_SOCKET_IFNAME": "ib0", "ZEROTRAIN_PEAK_FLOPS": "9.89e14", "HOME": "/root", "NCCL_IB_HCA": "mlx5"},
    )
    files = {os.path.basename(k): v for k, v in p.files.items()}
    assert files["hostfile"] == "node-a slots=4\nnode-b slots=4\n"
    assert files["deepspeed_env"] == "NCCL_IB_HCA=mlx5\nNCCL_SOCKET_IFNAME=ib0\nZEROTRAIN_PEAK_FLOPS=9.89e14\n"
    cmd = shlex.split(p.commands[0])
    assert cmd[0].startswith("DS_ENV_FILE=") and cmd[1] == "deepspeed"
    for flag, value in (
        ("--num_nodes", "2"),
        ("--num_gpus", "4"),
        ("--master_addr", "node-a"),
        ("--master_port", "29511"),
        ("--launcher", "pdsh"),
    ):
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[-6:] == ["--module", "zerotrain", "train", str(tmp_path / "c.toml"), "--train.lr", "1e-3"]
    assert p.world == 8 and p.run[1:4] == ["-u", "-m", "deepspeed.launcher.runner"]


def test_openmpi_gets_the_interface(tmp_path):
    p = plan(tmp_path, "deepspeed", env={"NCCL_SOCKET_IFNAME": "ib0"}, runner="openmpi")
    cmd = shlex.split(p.commands[0])
    assert (
        cmd[cmd.index("--launcher") + 1] == "openmpi"
        and cmd[cmd.index("--launcher_args") + 1] == "--mca btl_tcp_if_include ib0"
    )


def test_torchrun_one_command_per_node(tmp_path):
    p = plan(tmp_path, "torchrun", env={"NCCL_SOCKET_IFNAME": "eth1"})
    assert len(p.commands) == 2 and p.run is None  # neither node is this machine
    for rank, line in enumerate(p.commands):
        cmd = shlex.split(line)
        assert cmd[0] == "NCCL_SOCKET_IFNAME=eth1" and cmd[1] == "torchrun"
        assert cmd[cmd.index("--node_rank") + 1] == str(rank) and cmd[cmd.index("--master_addr") + 1] == "node-a"
        assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("-m") + 1] == "zerotrain"
    with pytest.raises(UserError, match="not among the hosts"):
        launch.run(p)


def test_slurm_script_with_pinned_hosts(tmp_path):
    p = plan(tmp_path, "slurm", env={"NCCL_DEBUG": "WARN"}, resolve=never_resolve)  # pinned names are never looked up
    script = p.files[str(tmp_path / "out" / "zerotrain.sbatch")]
    assert (
        "#SBATCH --nodes=2" in script
        and "#SBATCH --gpus-per-node=4" in script
        and "#SBATCH --nodelist=node-a,node-b" in script
    )
    assert "export NCCL_DEBUG=WARN" in script
    assert (
        'srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 4 --rdzv_id "$SLURM_JOB_ID" '
        '--rdzv_backend c10d --rdzv_endpoint "$head_node:29511" -m zerotrain train'
    ) in script
    assert p.commands == [f"sbatch {tmp_path / 'out' / 'zerotrain.sbatch'}"] and p.world == 8


def test_slurm_lets_slurm_choose_the_nodes(tmp_path):
    p = plan(
        tmp_path,
        "slurm",
        hosts=None,
        nodes=3,
        partition="gpu",
        account="proj42",
        time_limit="1-00:00:00",
        resolve=never_resolve,
    )
    script = p.files[str(tmp_path / "out" / "zerotrain.sbatch")]
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert {
        "#SBATCH --nodes=3",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --time=1-00:00:00",
    } <= set(header)
    assert not any("--nodelist" in line for line in header) and p.world == 12 and p.hosts == []


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(hosts=None), "needs --nodes N"),
        (dict(hosts=None, nodes=2, gpus_per_node=None), "--nodes needs --gpus-per-node"),
        (dict(nodes=3), "--nodes 3 but 2 hosts are pinned"),
        (dict(hosts=None, nodes=0), "--nodes 0 must be ≥ 1"),
    ],
)
def test_slurm_bad_requests(tmp_path, kw, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        plan(tmp_path, "slurm", **kw)


def test_slurm_flags_refused_for_other_launchers(tmp_path):
    with pytest.raises(UserError, match="are for --launcher slurm"):
        plan(tmp_path, "torchrun", partition="gpu")


FAKE_SCONTROL = """#!/bin/bash
# scontrol show hostnames LIST: SLURM's expansion of a node list, here for "gpu[07-08]" only
[ "$1 $2" = "show hostnames" ] && [ "$3" = "gpu[07-08]" ] || { echo "fake scontrol: unexpected $*" >&2; exit 1; }
printf 'gpu07\ngpu08\n'
"""

# srun runs its command once per node of the allocation; each task sees its SLURM_NODEID. This one records, per task,
# the node id, the environment the script exported, and the command, one argument a line.
FAKE_SRUN = """#!/bin/bash
for ((node = 0; node < SLURM_NNODES; node++)); do
  { echo "node=$node NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-}"; printf '%s\n' "$@"; } > "$SRUN_LOG.$node"
done
"""


def test_slurm_script_runs_under_fake_slurm(tmp_path):
    """The sbatch script as SLURM would run it on an allocation of gpu07 and gpu08: it reads the nodes from
    $SLURM_JOB_NODELIST, and every node's torchrun meets at the first of them."""
    r = run_ok(
        "launch",
        "--launcher",
        "slurm",
        "--nodes",
        2,
        "--gpus-per-node",
        8,
        "--partition",
        "h100",
        "--master-port",
        29600,
        "--out",
        tmp_path / "out",
        "--dry-run",
        "--",
        "train",
        "configs/gpt2-124m.toml",
        "--train.lr=3e-4",
        env={"NCCL_SOCKET_IFNAME": "ib0"},
    )
    assert "2 nodes × 8 GPUs = world 16" in r.stderr and not (tmp_path / "out").exists()
    script_text = r.stdout.split(f"--- {tmp_path / 'out' / 'zerotrain.sbatch'}\n")[1].split("--- command")[0]
    assert "#SBATCH --partition=h100" in script_text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "job.sbatch").write_text(script_text)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SRUN_LOG": str(tmp_path / "srun"),
    }
    job = subprocess.run(["bash", str(tmp_path / "job.sbatch")], capture_output=True, text=True, env=env, check=False)
    assert job.returncode == 0, job.stderr
    assert "job 4242 on 2 nodes (gpu07 gpu08) x 8 GPUs, rendezvous gpu07:29600" in job.stdout
    for node in (0, 1):
        first, *argv = (tmp_path / f"srun.{node}").read_text().splitlines()
        assert first == f"node={node} NCCL_SOCKET_IFNAME=ib0"
        assert argv[:2] == ["--kill-on-bad-exit=1", "torchrun"]
        assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--nproc_per_node") + 1] == "8"
        assert argv[argv.index("--rdzv_id") + 1] == "4242" and argv[argv.index("--rdzv_endpoint") + 1] == "gpu07:29600"
        assert argv[argv.index("-m") + 1 :] == ["zerotrain", "train", "configs/gpt2-124m.toml", "--train.lr=3e-4"]


def test_dry_run_never_resolves_names(tmp_path):
    """A SLURM or torchrun launch written on a login node names compute nodes it cannot resolve."""
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=tmp_path / "data")
    for launcher in ("slurm", "torchrun", "deepspeed"):
        r = run_ok(
            "launch",
            "--launcher",
            launcher,
            "--hosts",
            "node0.invalid,node1.invalid",
            "--gpus-per-node",
            4,
            "--out",
            tmp_path / "out",
            "--dry-run",
            "--",
            "train",
            cfg,
        )
        assert "2 nodes × 4 GPUs = world 8" in r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_and_writes_nothing(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    r = run_ok(
        "launch",
        "--hosts",
        "localhost",
        "--gpus-per-node",
        2,
        "--out",
        tmp_path / "out",
        "--dry-run",
        "--",
        "train",
        cfg,
    )
    assert "deepspeed --num_gpus 2 --master_addr 127.0.0.1" in r.stdout  # one node, this one: no hostfile, no ssh
    assert "1 node × 2 GPUs = world 2" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ bad input (CLI)


def test_bad_input_one_line_each(tmp_path):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=tmp_path / "data")
    hf = tmp_path / "hostfile"
    hf.write_text("localhost slots=2\nlocalhost: slots 2\n")
    common = ["--dry-run", "--", "train", cfg]
    assert_clean_failure(zerotrain("launch", "--hostfile", hf, *common), "hostfile:2:", "HOSTNAME slots=N")
    hf.write_text("localhost slots=2\n")
    assert_clean_failure(
        zerotrain("launch", "--hostfile", hf, "--gpus-per-node", 4, *common),
        "slots=2 (line 1)",
        "lower --gpus-per-node to 2",
    )
    assert_clean_failure(zerotrain("launch", "--hostfile", tmp_path / "nope", *common), "not found", "slots=GPUS")
    assert_clean_failure(
        zerotrain("launch", "--hosts", "localhost", "--gpus-per-node", 1, "--launcher", "mpirun", *common),
        "unknown launcher 'mpirun'",
        "deepspeed, torchrun or slurm",
    )
    assert_clean_failure(
        zerotrain("launch", "--hosts", "no-such-node.invalid", "--gpus-per-node", 1, "--", "train", cfg),
        "no-such-node.invalid does not resolve",
        "/etc/hosts",
    )  # a real launch looks the names up
    assert_clean_failure(zerotrain("launch", "--hosts", "localhost", *common), "needs --gpus-per-node")
    assert_clean_failure(
        zerotrain("launch", "--hosts", "localhost", "--gpus-per-node", 1, "--dry-run"), "nothing to launch"
    )
    assert_clean_failure(
        zerotrain("launch", "--hosts", "localhost", "--gpus-per-node", 1, "--dry-run", "--", "export", "x"),
        "cannot launch 'export'",
    )
    assert_clean_failure(
        zerotrain(
            "launch", "--hosts", "localhost", "--gpus-per-node", 1, "--dry-run", "--", "train", cfg, "--train.lrr=1"
        ),
        "unknown key train.lrr",
    )
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_clean_failure(
            zerotrain("launch", "--hosts", "localhost", "--gpus-per-node", 1, "--master-port", port, *common),
            f"--master-port {port} is in use",
            "choose another --master-port",
        )


# ------------------------------------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def two_rank_reference(two_rank_run):
    """The single-host run every launch must reproduce: ZeRO-2, 2 processes, `zerotrain train --nproc 2`
    (conftest's two_rank_run, with the same config as the launches below)."""
    return two_rank_run["losses"]


def assert_same_losses(run_dir, reference):
    losses = train_losses(run_dir)
    assert losses.keys() == reference.keys()
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), (step, losses[step], loss)


@pytest.mark.slow
def test_deepspeed_launch_from_a_one_node_hostfile(tmp_path, char_data, two_rank_reference):
    cfg = write_config(
        tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=6, eval_interval=0, save_interval=0
    )
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    r = run_ok(
        "launch",
        "--hostfile",
        tmp_path / "hostfile",
        "--out",
        tmp_path / "launch",
        "--master-port",
        launch_free_port(),
        "--",
        "train",
        cfg,
        env={"DS_ACCELERATOR": "cpu"},
    )
    assert "(written)" in r.stdout and (tmp_path / "launch" / "hostfile").is_file()
    assert_same_losses(tmp_path / "run", two_rank_reference)


def launch_free_port() -> int:
    from zerotrain.distributed import free_port

    return free_port()


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture
def two_namespaces():
    """Two network namespaces, "nodes" 10.77.0.1 and 10.77.0.2, joined by a veth pair whose ends are both named
    zt0 (so one GLOO_SOCKET_IFNAME serves both). Nothing else is in them: traffic can only cross the veth."""
    if not shutil.which("ip"):
        pytest.skip("needs iproute2's `ip` to create network namespaces")
    tag = f"{os.getpid() % 100000}"
    ns = (f"zt-a-{tag}", f"zt-b-{tag}")
    made = _sh("ip", "netns", "add", ns[0])
    if made.returncode:
        pytest.skip(f"cannot create a network namespace (needs root or CAP_NET_ADMIN): {made.stderr.strip()}")
    try:
        steps = [
            ("ip", "netns", "add", ns[1]),
            ("ip", "link", "add", f"zta{tag}", "type", "veth", "peer", "name", f"ztb{tag}"),
            ("ip", "link", "set", f"zta{tag}", "netns", ns[0]),
            ("ip", "link", "set", f"ztb{tag}", "netns", ns[1]),
        ]
        for i, (name, end) in enumerate(zip(ns, (f"zta{tag}", f"ztb{tag}"))):
            steps += [
                ("ip", "-n", name, "link", "set", end, "name", "zt0"),
                ("ip", "-n", name, "addr", "add", f"10.77.0.{i + 1}/24", "dev", "zt0"),
                ("ip", "-n", name, "link", "set", "zt0", "up"),
                ("ip", "-n", name, "link", "set", "lo", "up"),
            ]
        for step in steps:
            r = _sh(*step)
            if r.returncode:
                pytest.skip(f"cannot set up the veth pair ({' '.join(step)}): {r.stderr.strip()}")
        yield ns
    finally:
        for name in ns:
            _sh("ip", "netns", "del", name)  # deleting a namespace deletes its veth end, and so the pair


@pytest.mark.slow
def test_two_nodes_in_network_namespaces(tmp_path, char_data, two_namespaces, two_rank_reference):
    """`zerotrain launch --launcher torchrun` prints one command per node; each runs in its own namespace, the ranks
    meet at 10.77.0.1 and all-reduce over gloo on the veth, and ZeRO-2 reaches the single-host losses."""
    cfg = write_config(
        tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=6, eval_interval=0, save_interval=0
    )
    port = 29731
    env = {"GLOO_SOCKET_IFNAME": "zt0", "DS_ACCELERATOR": "cpu", "ZEROTRAIN_TEST_NETNS": "1"}
    r = run_ok(
        "launch",
        "--hosts",
        "10.77.0.1,10.77.0.2",
        "--gpus-per-node",
        1,
        "--launcher",
        "torchrun",
        "--master-port",
        port,
        "--dry-run",
        "--",
        "train",
        cfg,
        env=env,
    )
    lines = r.stdout.split("--- commands, one per node\n")[1].splitlines()
    assert len(lines) == 2 and all(
        line.startswith("DS_ACCELERATOR=cpu GLOO_SOCKET_IFNAME=zt0 ZEROTRAIN_TEST_NETNS=1 ") for line in lines
    )
    procs = []
    run_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} | {
        "PYTHONUNBUFFERED": "1"
    }
    for ns, line in zip(two_namespaces, lines):
        line = line.replace(
            " torchrun ", f" {shlex.quote(sys.executable)} -m torch.distributed.run "
        )  # the same program, this Python
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, "bash", "-c", line],
                cwd=REPO,
                env=run_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    sent = int(_sh("ip", "netns", "exec", two_namespaces[1], "cat", "/sys/class/net/zt0/statistics/tx_bytes").stdout)
    assert sent > 100_000, f"rank 1 sent only {sent} bytes over the veth"
    assert_same_losses(tmp_path / "run", two_rank_reference)
