"""Where and how jobs run: the settings of the ``hydra/launcher`` presets and a run.yaml's ``launcher:`` map.

Its own small module so that the Hydra plugin, imported at every start-up, needs nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class LauncherParams:
    """Where and how jobs run (the ``hydra/launcher`` presets and a run.yaml's ``launcher:`` map).

    Mirrors hydra-submitit-launcher's ``SlurmQueueConf`` / ``LocalQueueConf`` keys, plus ``cluster``
    and ``wait``. ``max_num_timeout`` defaults to 3: with 0, a job that reaches its time limit is
    not requeued.
    """

    cluster: str = "inprocess"          # inprocess | local | slurm
    wait: bool = True                   # wait for the jobs and write the sweep summary
    submitit_folder: Optional[str] = None   # null: SWEEP_DIR/.submitit/%j
    timeout_min: int = 60
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    tasks_per_node: int = 1
    mem_gb: Optional[int] = None
    nodes: int = 1
    name: str = "mlip-launch"
    stderr_to_stdout: bool = False
    partition: Optional[str] = None
    qos: Optional[str] = None
    comment: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    account: Optional[str] = None
    gres: Optional[str] = None
    cpus_per_gpu: Optional[int] = None
    gpus_per_task: Optional[int] = None
    mem_per_gpu: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    array_parallelism: int = 256
    max_num_timeout: int = 3
    signal_delay_s: int = 120
    setup: Optional[List[str]] = None
    srun_args: Optional[List[str]] = None
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    poll_interval_s: float = 5.0        # how often a waiting submitter asks the cluster for job states
