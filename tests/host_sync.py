"""A recorder of tensor-to-host reads made by the project's training step (test_fast_path.py, test_taps.py)."""

from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback

_SYNCS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy",
          "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}  # fmt: skip
#: Indexing with a boolean mask has a data-dependent shape: the host waits for the mask.
_INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _has_bool_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    if isinstance(value, (tuple, list)):
        return any(_has_bool_tensor(v) for v in value)
    return False
#: The training step's own code (the data pipeline runs in DataLoader workers on the host by design). Not
#: recorded, because their reads are of host tensors only, which a CPU run cannot tell from device ones:
#: experiments/data/batch_augment.py (its per-image parameters are drawn on the host and grouped there) and
#: experiments/sync_batchnorm.py (its gloo path runs on CPU tensors only; on GPUs torch's kernels run).
_STEP_FILES = ("sigreg_hf/trainer.py", "sigreg_hf/taps.py", "sigreg_hf/losses.py", "sigreg_hf/soft_targets.py",
               "sigreg_hf/experiments/image_trainer.py")  # fmt: skip
_LOGGING_FUNCTIONS = {"log", "_maybe_log_save_evaluate", "evaluate", "on_log", "on_train_end"}


class HostSyncRecorder(TorchFunctionMode):
    """Records tensor-to-host reads made from the training step's own code, outside logging/evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.offenders: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _SYNCS or (name in _INDEXING and len(args) > 1 and _has_bool_tensor(args[1])):
            stack = traceback.extract_stack()[:-1]
            callers = [f for f in stack if "/torch/" not in f.filename.replace("\\", "/")]
            caller = callers[-1] if callers else None  # the line that asked for the value
            if (
                caller is not None
                and caller.filename.replace("\\", "/").endswith(_STEP_FILES)
                and not any(f.name in _LOGGING_FUNCTIONS for f in stack)
            ):
                self.offenders.append(f"{func.__name__} at {caller.filename}:{caller.lineno} ({caller.name})")
        return func(*args, **(kwargs or {}))


class RecordSteps(TrainerCallback):
    """Runs ``recorder`` from the second training step to the end of training (start-up may read values once)."""

    def __init__(self, recorder: HostSyncRecorder) -> None:
        self.recorder = recorder

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.recorder.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self.recorder.__exit__(None, None, None)
