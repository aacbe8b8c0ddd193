"""The fabric check at the start of a multi-node stage. A short all-reduce says which transport the collectives use
and at what bus bandwidth; the stage logs and exports both, records them in its summary, and stops at once when the
bandwidth is below the run's floor, instead of training for days over TCP sockets because NCCL fell back to them
(an image without the RDMA userspace, a pod without the RDMA device or the secondary network)."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from vita_api.errors import VitaError

log = logging.getLogger("vita_trainer")

# Where NCCL writes its INFO log when the run did not ask for one (NCCL expands %h and %p): the transport is read
# back from it. Set before the process group exists; NCCL reads it when its first communicator is made.
NCCL_DEBUG_FILE = "/tmp/vita-nccl.%h.%p.log"
VERBS_DEVICES = Path("/sys/class/infiniband")


class FabricTooSlow(VitaError):
    """The collectives run below the run's floor: another attempt on the same image and profile would crawl too."""
    retryable = False


def prepare_nccl_log() -> Path | None:
    """Ask NCCL for the INFO lines that name its transport, into a file, unless the run set NCCL_DEBUG itself (then
    its own choice stands and the transport may read "unknown"). Also makes the flight recorder's folder (the
    operator names it in TORCH_NCCL_DEBUG_INFO_TEMP_FILE; PyTorch writes the dumps but makes no folder)."""
    if recorder := os.environ.get("TORCH_NCCL_DEBUG_INFO_TEMP_FILE"):
        try:
            Path(recorder).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # no dumps then; the stage itself may still run
            log.warning("NCCL flight recorder folder %s not made: %s", Path(recorder).parent, e)
    if os.environ.get("NCCL_DEBUG") and not os.environ.get("NCCL_DEBUG_FILE"):
        return None
    os.environ.setdefault("NCCL_DEBUG", "INFO")
    os.environ.setdefault("NCCL_DEBUG_SUBSYS", "INIT,NET")
    os.environ.setdefault("NCCL_DEBUG_FILE", NCCL_DEBUG_FILE)
    pattern = os.environ["NCCL_DEBUG_FILE"]
    return Path(pattern.replace("%h", os.uname().nodename).replace("%p", str(os.getpid())))


def verbs_devices(root: Path = VERBS_DEVICES) -> list[str]:
    """The RDMA devices this pod sees (mlx5_0, ...): none means NCCL cannot use InfiniBand or RoCE here."""
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def nccl_transport(text: str) -> str:
    """The network NCCL chose, from its INFO log: "Using network IB" (InfiniBand and RoCE alike), "Socket", or a
    plugin's name (AWS Libfabric, ...). Lowercased; "unknown" when the log does not say."""
    found = re.search(r"Using network (\S+)", text) or re.search(r"via NET/([^/\s]+)", text)
    return found.group(1).lower() if found else "unknown"


def bus_bandwidth_gbps(nbytes: int, seconds: float, world_size: int) -> float:
    """All-reduce bus bandwidth as nccl-tests defines it: algorithm bandwidth (bytes / time) x 2(n-1)/n, in GB/s
    (10^9 bytes), comparable with the link's rated speed."""
    return nbytes / seconds * 2 * (world_size - 1) / world_size / 1e9


def multi_node() -> bool:
    """More than one node: torchrun's world is larger than this node's share of it."""
    return int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def probe(megabytes: int = 256, iterations: int = 5, nccl_log: Path | None = None) -> dict[str, Any]:
    """Time `iterations` all-reduces of `megabytes` (after two warm-up rounds) on every rank; the slowest rank's
    time sets the bandwidth."""
    dist = torch.distributed
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    data = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    for _ in range(2):
        dist.all_reduce(data)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iterations):
        dist.all_reduce(data)
    sync()
    elapsed = torch.tensor([(time.perf_counter() - start) / iterations], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the collective is as fast as its slowest rank
    if backend == "nccl":
        transport = nccl_transport(nccl_log.read_text(errors="replace")) if nccl_log and nccl_log.is_file() \
            else "unknown"
    else:
        transport = backend  # gloo: TCP between the processes
    world = dist.get_world_size()
    return {"transport": transport, "bus_bandwidth_gbps": round(bus_bandwidth_gbps(data.numel() * 4,
                                                                                     float(elapsed), world), 3),
            "megabytes": megabytes, "world_size": world, "verbs_devices": verbs_devices()}


def check_fabric(mode: str, floor_gbps: float, megabytes: int, nccl_log: Path | None) -> dict[str, Any] | None:
    """Probe when asked ("on"), or on a multi-node stage ("auto"); raise FabricTooSlow below `floor_gbps` (0: no
    floor). None when not probed."""
    if mode == "off" or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if mode == "auto" and not multi_node():
        return None
    found = probe(megabytes, nccl_log=nccl_log)
    log.info("fabric: %s at %.2f GB/s bus bandwidth over %d ranks (verbs devices: %s)", found["transport"],
             found["bus_bandwidth_gbps"], found["world_size"], ", ".join(found["verbs_devices"]) or "none")
    if floor_gbps and found["bus_bandwidth_gbps"] < floor_gbps:
        raise FabricTooSlow(
            f"the all-reduce probe measured {found['bus_bandwidth_gbps']:.2f} GB/s bus bandwidth over "
            f"{found['transport']}, below the run's floor of {floor_gbps:g} GB/s (spec.fabric.minBusBandwidthGBps): "
            f"training at this speed would take many times longer. Verbs devices in the pod: "
            f"{', '.join(found['verbs_devices']) or 'none'}. Check that the run uses a fabric profile with the RDMA "
            f"device and network (spec.fabric.profile), that the trainer image has the RDMA userspace, and NCCL's "
            f"log (NCCL_DEBUG=INFO) for why it chose {found['transport']}; or lower the floor")
    return found
