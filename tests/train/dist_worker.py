"""One rank of a distributed test run (started W times by ``test_distributed.launch`` with torchrun's environment:
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). ``argv[1]``: a JSON list of ``[preset, overrides, out]``
runs, trained one after another in one process group."""

import json
import sys

import torch.distributed as dist

from leanformer.config import load_run_config
from leanformer.train.trainer import Trainer

if __name__ == "__main__":
    for preset, overrides, out in json.loads(sys.argv[1]):
        Trainer(load_run_config(preset, overrides), out).fit()
    if dist.is_initialized():
        dist.destroy_process_group()
