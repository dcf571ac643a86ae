"""Two "nodes" on this machine: the README's torchrun command, once per node rank, against one rendezvous address on
localhost. Both must finish, keep identical parameters after every update (`check_sync`), and leave one run: one
checkpoint (rank 0's) and one replay sidecar per rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ccpo_pl.checkpointing import safe_load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_each_train_one_run_with_identical_parameters(tmp_path):
    port = free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    nodes = [subprocess.Popen(
        [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
         "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "ccpo_pl.fit",
         "trainer.num_nodes=2", "trainer.devices=1", "experiment=smoke", "total_frames=800", "threads=1",
         "check_sync=true", "run_name=nodes", f"log_dir={tmp_path / 'logs'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=900)[0])
    finally:
        for node in nodes:
            node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    line = next(ln for ln in outputs[0].splitlines() if ln.startswith("ddp_sync_checks="))
    fields = dict(kv.split("=") for kv in line.split())
    assert fields["ranks"] == "2" and float(fields["max_param_diff"]) == 0.0
    assert int(fields["ddp_sync_checks"]) == 80  # 800 frames over 2 ranks: 1 epoch x 2 collections x 40 updates
    ckpt_dir = tmp_path / "logs" / "nodes" / "checkpoints"
    ckpt = safe_load(ckpt_dir / "last.ckpt")
    assert ckpt["training_state"]["world_size"] == 2 and ckpt["training_state"]["stream"]["frames"] * 2 == 800
    token = ckpt["training_state"]["sidecar"]
    assert sorted(p.name for p in (ckpt_dir / "sidecars").iterdir()) == ["rank0", "rank1"]
    assert all((ckpt_dir / "sidecars" / f"rank{r}" / f"{token}.pt").is_file() for r in (0, 1))
    assert not any("ddp_sync_checks=" in ln for ln in outputs[1].splitlines())  # rank 0 reports, once
