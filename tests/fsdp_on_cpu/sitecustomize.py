"""TEST-ONLY shim: lets accelerate run FSDP2 on CPU processes (gloo), so that CI can test FSDP2 without a GPU.

Python imports `sitecustomize` at start-up from `sys.path`; the engine tests put this folder on PYTHONPATH of the
processes they launch, never anything a user runs. Why it is needed: accelerate (1.15, `AcceleratorState.__init__`)
switches `distributed_type` to FSDP only for GPU-like types, so a CPU run given an FSDP plugin stays on
`MULTI_CPU` and its model is wrapped in DDP. This shim makes that one decision the other way: after
`AcceleratorState.__init__`, a `MULTI_CPU` state that was handed an `fsdp_plugin` becomes `FSDP` with that plugin.
Everything after it (FSDP2's `fully_shard`, sharded state dicts, checkpoints) is accelerate's and torch's own code.
"""

import os

if os.environ.get("PSFT_TEST_FSDP_ON_CPU") == "1":
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    _init = AcceleratorState.__init__

    def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
