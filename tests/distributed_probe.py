"""Run by tests/test_distributed.py under torchrun: one rank's share of a sharded Adam, measured.

Writes rank_<r>.json into the folder given as the argument: the indices of the parameters whose Adam
state the rank holds (ZeroRedundancyOptimizer's own partition) and the bytes of that state after a step.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from patchlab.config import from_params
from patchlab.model import build

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from tiny import tiny_params  # noqa: E402

dist.init_process_group("gloo")
model, _ = build(from_params(**tiny_params(dim=16, dim_mults=(1, 2, 4))))
params = list(model.parameters())
opt = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.Adam, lr=1e-4)
for p in params:
    p.grad = torch.zeros_like(p)
opt.step()
ids = {id(p): i for i, p in enumerate(params)}
mine = sorted(ids[id(p)] for p in opt.optim.param_groups[0]["params"])
state = sum(t.nbytes for s in opt.optim.state.values() for t in s.values() if torch.is_tensor(t))
out = __import__("pathlib").Path(sys.argv[1]) / f"rank_{dist.get_rank()}.json"
out.write_text(json.dumps({"rank": dist.get_rank(), "params": mine, "state_bytes": state}))
dist.destroy_process_group()
