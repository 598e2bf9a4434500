"""`zerotrain launch`: validate a multi-node set-up, then write (and run) what starts it.

Reading order: `parse_hostfile` / `hosts_from_list` -> `check_hosts` and `check_port` (every problem with
its fix, before anything starts) -> `plan_launch` builds one of three launches from the same hosts:

- deepspeed: DeepSpeed's launcher over pdsh or OpenMPI with a hostfile; the environment travels in a
  .deepspeed_env file, which the launcher exports on every node (deepspeed/launcher/runner.py);
- torchrun: one command per node (static rendezvous at the first host); each node runs its own;
- slurm: an sbatch script that asks SLURM for `--nodes` x `--gpus-per-node`, reads the node list SLURM chose at run
  time and starts one `srun` task per node running torchrun with a c10d rendezvous at the first of them. It is
  written on a login node, where the compute nodes' names need not resolve, so nothing about them is checked here.

A dry run never resolves a name: it checks what can be checked offline and prints the launch.
No torch or deepspeed import: this only writes files and starts the launcher.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zerotrain import UserError

LAUNCHERS = ("deepspeed", "torchrun", "slurm")
MULTINODE_RUNNERS = ("pdsh", "openmpi")
DEFAULT_PORT = 29500
VERBS = ("train", "doctor")  # what may run under `zerotrain launch -- ...`

# Environment every rank must see alike: NCCL and gloo network choices, torch's distributed debugging and
# zerotrain's own switches. DeepSpeed's launcher exports only NCCL_*, PYTHON*, MV2*, UCX* and MLFLOW* by itself.
FORWARDED_PREFIXES = ("NCCL_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_", "GLOO_", "ZEROTRAIN_", "PYTORCH_CUDA_ALLOC_CONF",
                      "DS_ACCELERATOR", "OMP_NUM_THREADS", "HF_HOME", "HF_HUB_OFFLINE", "TORCH_CUDA_ARCH_LIST")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int | None  # GPUs the host offers (hostfile `slots=N`); None when given with --hosts
    line: int | None = None  # hostfile line number


def parse_hostfile(path: str | Path) -> list[Host]:
    """DeepSpeed's hostfile format, `HOST slots=N` per line, `#` comments and blank lines allowed.
    Every malformed line and duplicate is reported at once, by line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"hostfile {path} not found; write one line `HOSTNAME slots=GPUS` per node, or pass --hosts h1,h2") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read hostfile {path} ({getattr(e, 'strerror', None) or e}); check the path and its permissions") from None
    hosts, problems, seen = [], [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots\s*=\s*(\d+)", line)
        if not m:
            problems.append(f"{path}:{number}: {raw.strip()!r} is not `HOSTNAME slots=N`")
            continue
        name, slots = m.group(1), int(m.group(2))
        if slots < 1:
            problems.append(f"{path}:{number}: {name} has slots=0; give the number of GPUs it has (≥ 1) or remove the line")
        if name in seen:
            problems.append(f"{path}:{number}: {name} is listed again (first on line {seen[name]}); keep one line per host")
            continue
        seen[name] = number
        hosts.append(Host(name, slots, number))
    if problems:
        raise UserError("; ".join(problems) + "; fix the hostfile")
    if not hosts:
        raise UserError(f"hostfile {path} lists no hosts; write one line `HOSTNAME slots=GPUS` per node")
    return hosts


def hosts_from_list(spec: str) -> list[Host]:
    names = [h.strip() for h in spec.split(",")]
    if not all(names):
        raise UserError(f"--hosts {spec!r} has an empty name; write --hosts node1,node2")
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        raise UserError(f"--hosts names {', '.join(dupes)} more than once; list each node once")
    return [Host(h, None) for h in names]


def local_addresses() -> set[str]:
    """This machine's names and interface addresses, to tell whether a host is this one."""
    import psutil

    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    for addrs in psutil.net_if_addrs().values():
        names.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    return names


def is_local(host: str, local: set[str], resolve=socket.getaddrinfo) -> bool:
    """Whether `host` is this machine; with resolve=None (a dry run) by its name or address alone, no DNS."""
    if host in local:
        return True
    if resolve is None:
        return False
    try:
        return any(info[4][0] in local for info in resolve(host, None))
    except (OSError, UnicodeError):
        return False


def local_gpu_count() -> int | None:
    """GPUs nvidia-smi lists here (honouring no CUDA_VISIBLE_DEVICES: the launcher chooses), None without it."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(line.startswith("GPU ") for line in out.splitlines())


def check_hosts(hosts: list[Host], gpus_per_node: int, resolve=socket.getaddrinfo, local: set[str] | None = None,
                gpus_here: int | None = None) -> None:
    """Every host resolves, and offers the GPUs asked for: its hostfile slots, and on this machine the GPUs
    nvidia-smi sees. All problems in one UserError. With resolve=None (a dry run) names are not looked up."""
    problems = []
    if gpus_per_node < 1:
        problems.append(f"--gpus-per-node {gpus_per_node} must be ≥ 1")
    for h in hosts:
        addresses = set()
        if resolve is not None:
            try:
                addresses = {info[4][0] for info in resolve(h.name, None)}
            except (OSError, UnicodeError):
                problems.append(f"host {h.name}{f' (line {h.line})' if h.line else ''} does not resolve; fix the name, "
                                f"add it to /etc/hosts or DNS, or use its IP address")
                continue
        if len(hosts) > 1 and addresses and all(a.startswith("127.") or a == "::1" for a in addresses):
            problems.append(f"host {h.name}{f' (line {h.line})' if h.line else ''} is a loopback address, which other nodes "
                            f"cannot reach; use its hostname or network IP")
            continue
        if h.slots is not None and gpus_per_node > h.slots:
            problems.append(f"--gpus-per-node {gpus_per_node} but {h.name} has slots={h.slots}"
                            f"{f' (line {h.line})' if h.line else ''}; lower --gpus-per-node to {h.slots} or fix its slots")
        if gpus_here is not None and gpus_here > 0 and is_local(h.name, local or set(), resolve) and gpus_per_node > gpus_here:
            problems.append(f"--gpus-per-node {gpus_per_node} but this host ({h.name}) has {gpus_here} GPUs; "
                            f"lower --gpus-per-node to {gpus_here}")
    if problems:
        raise UserError("; ".join(problems))


def check_port(master: str, port: int, local: set[str], resolve=socket.getaddrinfo) -> None:
    """The rendezvous port must be free on the master. Only the master itself can tell, so this checks when
    the master is this machine."""
    if not 1 <= port <= 65535:
        raise UserError(f"--master-port {port} is not a TCP port; choose one in 1024-65535")
    if not is_local(master, local, resolve):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            raise UserError(f"--master-port {port} is in use on {master} (the master); choose another --master-port "
                            f"or stop what holds it (`ss -ltnp 'sport = :{port}'`)") from None


def forwarded_env(env=os.environ) -> dict[str, str]:
    return {k: v for k, v in sorted(env.items()) if k.startswith(FORWARDED_PREFIXES)}


# ------------------------------------------------------------------------------------------------ the launches

@dataclass
class LaunchPlan:
    launcher: str
    hosts: list[Host]  # the pinned nodes; empty for an sbatch that lets SLURM choose them
    gpus_per_node: int
    master: str
    port: int
    nodes: int = 0  # node count; 0 means len(hosts)
    files: dict[str, str] = field(default_factory=dict)  # path -> content, written before running
    commands: list[str] = field(default_factory=list)  # shell lines, one per node for torchrun
    run: list[str] | None = None  # what `zerotrain launch` runs here (argv), None when it only writes
    local_nproc: int | None = None  # one node, this machine: run through distributed.launch_local
    zt_args: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def node_count(self) -> int:
        return self.nodes or len(self.hosts)

    @property
    def world(self) -> int:
        return self.node_count * self.gpus_per_node


def _env_prefix(env: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())


def deepspeed_launch(hosts, gpus_per_node, master, port, zt_args, env, out: Path, runner: str = "pdsh",
                     single_local: bool = False) -> LaunchPlan:
    """With a single node that is this machine, DeepSpeed starts the ranks itself (a hostfile would make it ssh
    to this machine); otherwise pdsh or mpirun start one launcher per node."""
    hostfile = out / "hostfile"
    env_file = out / "deepspeed_env"
    plan = LaunchPlan("deepspeed", hosts, gpus_per_node, master, port)
    plan.files[str(hostfile)] = "".join(f"{h.name} slots={h.slots or gpus_per_node}\n" for h in hosts)
    # DeepSpeed reads DS_ENV_FILE (default .deepspeed_env in ~ and the working directory) and exports each
    # KEY=VALUE line on every node; an absolute name keeps the user's own ~/.deepspeed_env untouched.
    plan.files[str(env_file)] = "".join(f"{k}={v}\n" for k, v in env.items())
    if single_local:
        args = ["--num_gpus", str(gpus_per_node), "--master_addr", "127.0.0.1", "--master_port", str(port), "--no_local_rank"]
        plan.notes.append(f"one node, this machine: started like `zerotrain train --nproc {gpus_per_node}` (DeepSpeed's local "
                          f"launcher on a free port, signals forwarded to the ranks), no ssh")
        plan.local_nproc = gpus_per_node
    else:
        args = ["--hostfile", str(hostfile), "--num_nodes", str(len(hosts)), "--num_gpus", str(gpus_per_node),
                "--master_addr", master, "--master_port", str(port), "--launcher", runner, "--no_local_rank"]
    ifname = env.get("NCCL_SOCKET_IFNAME") or env.get("GLOO_SOCKET_IFNAME")
    if runner == "openmpi" and ifname:  # DeepSpeed otherwise tells OpenMPI to use eth0
        args += ["--launcher_args", f"--mca btl_tcp_if_include {ifname.split(',')[0].lstrip('^=')}"]
    args += ["--module", "zerotrain", *zt_args]
    ds_env = {"DS_ENV_FILE": str(env_file.resolve())}
    plan.commands.append(_env_prefix(ds_env) + shlex.join(["deepspeed", *args]))
    plan.run = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", *args]
    return plan


def torchrun_commands(hosts, gpus_per_node, master, port, zt_args, env) -> list[str]:
    """One line per node: torchrun's static rendezvous at master:port, node ranks in host order."""
    return [_env_prefix(env) + shlex.join(["torchrun", "--nnodes", str(len(hosts)), "--nproc_per_node", str(gpus_per_node),
                                           "--node_rank", str(i), "--master_addr", master, "--master_port", str(port),
                                           "-m", "zerotrain", *zt_args])
            for i, _ in enumerate(hosts)]


@dataclass(frozen=True)
class SlurmRequest:
    """What the sbatch header asks SLURM for. Only `nodes` and `gpus_per_node` are required."""
    nodes: int
    gpus_per_node: int
    nodelist: tuple[str, ...] = ()  # pinned hosts; empty: SLURM chooses
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None  # SLURM's --time syntax, e.g. 2-00:00:00


def slurm_script(request: SlurmRequest, port: int, zt_args: list[str], env: dict[str, str]) -> str:
    """sbatch script: one srun task per node, each a torchrun that meets the others at the first node of the
    allocation through torchrun's c10d rendezvous (no node ranks to hand out). The nodes are whatever SLURM
    allocated: their names are read at run time from $SLURM_JOB_NODELIST, never fixed when the script is written."""
    lines = ["#!/bin/bash", "#SBATCH --job-name=zerotrain", f"#SBATCH --nodes={request.nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --gpus-per-node={request.gpus_per_node}", "#SBATCH --output=zerotrain-%j.log"]
    for flag, value in (("partition", request.partition), ("account", request.account), ("time", request.time_limit)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    if request.nodelist:
        lines.append(f"#SBATCH --nodelist={','.join(request.nodelist)}")
    lines += ["", "set -euo pipefail"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += ['nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")',
              'head_node=$(echo "$nodes" | head -n 1)',
              f'echo "zerotrain: job $SLURM_JOB_ID on $SLURM_NNODES nodes ($(echo $nodes)) x {request.gpus_per_node} GPUs, '
              f'rendezvous $head_node:{port}"', "",
              ("srun --kill-on-bad-exit=1 torchrun --nnodes \"$SLURM_NNODES\" "
               f"--nproc_per_node {request.gpus_per_node} --rdzv_id \"$SLURM_JOB_ID\" --rdzv_backend c10d "
               f"--rdzv_endpoint \"$head_node:{port}\" -m zerotrain {shlex.join(zt_args)}"), ""]
    return "\n".join(lines)


def check_command(zt_args: list[str]) -> None:
    """What runs on the nodes: a zerotrain verb, and for train a run config that loads (typos caught here,
    not on N nodes at once). Data and checkpoints are checked by each rank where they live."""
    if not zt_args:
        raise UserError("nothing to launch; end with -- train CONFIG.toml [--section.key=value ...] (or -- doctor comm)")
    if zt_args[0] not in VERBS:
        raise UserError(f"cannot launch {zt_args[0]!r}; end with -- train CONFIG.toml [overrides] or -- doctor comm")
    if zt_args[0] == "train":
        if len(zt_args) < 2:
            raise UserError("-- train needs a run config: -- train CONFIG.toml [--section.key=value ...]")
        from zerotrain.runconfig import load_run_config

        overrides, rest = [], [a for a in zt_args[2:] if a != "--overwrite"]
        while rest:  # `--train.lr=3e-4` or `--train.lr 3e-4`, as `zerotrain train` takes them
            item = rest.pop(0)
            if item.startswith("--") and "=" not in item and rest and not rest[0].startswith("--"):
                item = f"{item}={rest.pop(0)}"
            overrides.append(item)
        load_run_config(zt_args[1], overrides)


def plan_launch(*, hostfile: str | None, hosts: str | None, gpus_per_node: int | None, launcher: str, port: int,
                zt_args: list[str], out: str | Path, runner: str = "pdsh", env=os.environ, resolve=socket.getaddrinfo,
                gpus_here: int | None = None, nodes: int | None = None, partition: str | None = None,
                account: str | None = None, time_limit: str | None = None, dry_run: bool = False) -> LaunchPlan:
    """Validate the set-up and build the launch; nothing is written or started here. A dry run, and any SLURM
    launch, never looks up a host name (resolve is not called)."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; use --launcher deepspeed, torchrun or slurm")
    if runner not in MULTINODE_RUNNERS:
        raise UserError(f"unknown --multinode-runner {runner!r}; use pdsh or openmpi")
    if launcher != "slurm" and (nodes is not None or partition or account or time_limit):
        raise UserError("--nodes, --partition, --account and --time are for --launcher slurm; with deepspeed or torchrun "
                        "name the nodes with --hostfile or --hosts")
    if hostfile and hosts:
        raise UserError("name the nodes with --hostfile FILE or --hosts h1,h2, not both")
    if nodes is not None and nodes < 1:
        raise UserError(f"--nodes {nodes} must be ≥ 1")
    if launcher == "slurm":
        if not (hostfile or hosts or nodes):
            raise UserError("--launcher slurm needs --nodes N (SLURM chooses the nodes), or --hosts/--hostfile to pin them")
    elif not (hostfile or hosts):
        raise UserError("name the nodes with --hostfile FILE or --hosts h1,h2 (one of the two)")
    node_list = parse_hostfile(hostfile) if hostfile else hosts_from_list(hosts) if hosts else []
    if nodes is not None and node_list and nodes != len(node_list):
        raise UserError(f"--nodes {nodes} but {len(node_list)} hosts are pinned; give one of the two, or as many hosts as nodes")
    if gpus_per_node is None:
        slots = {h.slots for h in node_list}
        if not node_list or None in slots:
            raise UserError(f"{'--hosts' if node_list else '--nodes'} needs --gpus-per-node N (GPUs to use on each node)")
        if len(slots) > 1:
            raise UserError(f"the hostfile gives different slots ({', '.join(map(str, sorted(slots)))}); "
                            f"pass --gpus-per-node N to use N GPUs on every node")
        gpus_per_node = slots.pop()
    check_command(zt_args)
    fwd = forwarded_env(env)
    out = Path(out)
    if launcher == "slurm":  # written on a login node: the compute nodes are SLURM's to name and check
        check_hosts(node_list, gpus_per_node, resolve=None)
        if not 1 <= port <= 65535:
            raise UserError(f"--master-port {port} is not a TCP port; choose one in 1024-65535")
        request = SlurmRequest(nodes or len(node_list), gpus_per_node, tuple(h.name for h in node_list), partition, account,
                               time_limit)
        script = out / "zerotrain.sbatch"
        plan = LaunchPlan("slurm", node_list, gpus_per_node, "the first node SLURM allocates", port, nodes=request.nodes)
        plan.files[str(script)] = slurm_script(request, port, zt_args, fwd)
        plan.commands.append(f"sbatch {shlex.quote(str(script))}")
        plan.run = ["sbatch", str(script)]
        if not node_list:
            plan.notes.append("SLURM chooses the nodes; the script reads them from $SLURM_JOB_NODELIST when the job starts")
    else:
        if dry_run:
            resolve = None  # print the launch without DNS; a real launch checks the names first
            plan_notes = ["dry run: host names were not looked up"]
        else:
            plan_notes = []
        local = local_addresses()
        check_hosts(node_list, gpus_per_node, resolve, local, gpus_here)
        master = node_list[0].name
        check_port(master, port, local, resolve)
        if launcher == "deepspeed":
            single_local = len(node_list) == 1 and is_local(master, local, resolve)
            plan = deepspeed_launch(node_list, gpus_per_node, master, port, zt_args, fwd, out, runner, single_local)
        else:
            plan = LaunchPlan("torchrun", node_list, gpus_per_node, master, port,
                              commands=torchrun_commands(node_list, gpus_per_node, master, port, zt_args, fwd))
            plan.files[str(out / "torchrun.sh")] = "".join(
                f"# node {i} ({h.name})\n{c}\n" for i, (h, c) in enumerate(zip(node_list, plan.commands)))
            mine = [i for i, h in enumerate(node_list) if is_local(h.name, local, resolve)]
            if mine:  # run this node's share; the others run the same `zerotrain launch` (or their line of torchrun.sh)
                plan.run = ["bash", "-c", plan.commands[mine[0]]]
            plan.notes.append("start the same command on every node (each runs its own line), or run each line of "
                              f"{out / 'torchrun.sh'} on its node")
        plan.notes += plan_notes
    plan.zt_args = list(zt_args)
    if not fwd:
        plan.notes.append("no NCCL_*/GLOO_*/ZEROTRAIN_* variables set here; on multi-homed nodes set NCCL_SOCKET_IFNAME "
                          "(and GLOO_SOCKET_IFNAME) to the interface the nodes share")
    return plan


def write_files(plan: LaunchPlan) -> None:
    for path, text in plan.files.items():
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {p}: {e.strerror or e}; choose another --out") from None
        if p.suffix in (".sh", ".sbatch"):
            p.chmod(0o755)


def run(plan: LaunchPlan, runner: str = "pdsh") -> int:
    """Start the launch from this machine and return its exit code."""
    import shutil

    if plan.local_nproc:
        from zerotrain.distributed import launch_local

        return launch_local(plan.local_nproc, plan.zt_args)
    if plan.run is None:
        raise UserError(f"this machine is not among the hosts ({', '.join(h.name for h in plan.hosts)}); run `zerotrain launch` "
                        f"on each node, or start the printed commands there (--dry-run only prints them)")
    if plan.launcher == "slurm" and not shutil.which("sbatch"):
        raise UserError("sbatch not found: run this on a SLURM login node, or pass --dry-run and submit the script there")
    if plan.launcher == "deepspeed" and len(plan.hosts) > 1 and not shutil.which(runner if runner == "pdsh" else "mpirun"):
        raise UserError(f"{'pdsh' if runner == 'pdsh' else 'mpirun'} not found; install it, use --multinode-runner "
                        f"{'openmpi' if runner == 'pdsh' else 'pdsh'}, or --launcher torchrun")
    if plan.launcher == "deepspeed" and len(plan.hosts) > 1:
        for h in plan.hosts:  # DeepSpeed's launcher needs passwordless ssh to every node; say which one fails
            probe = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", h.name, "true"],
                                   capture_output=True, text=True, check=False)
            if probe.returncode != 0:
                raise UserError(f"cannot ssh to {h.name} without a password ({probe.stderr.strip()[:120] or 'ssh failed'}); "
                                f"set up ssh keys to every node, or use --launcher torchrun or slurm")
    env = dict(os.environ)
    if plan.launcher == "deepspeed":
        env["DS_ENV_FILE"] = str(Path(next(p for p in plan.files if p.endswith("deepspeed_env"))).resolve())
    return subprocess.run(plan.run, env=env, check=False).returncode
