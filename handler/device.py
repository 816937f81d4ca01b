"""Where a worker runs, and how a GPU worker keeps its memory bounded.

On a GPU, TF32 is switched off so that float32 explanations on the GPU match float32 ones on the
CPU. ``gpu_memory_fraction`` caps the caching allocator per process (several workers or models on
one GPU), and after a batch of more than ``release_cache_above_tokens`` padded tokens the
allocator's cached blocks are handed back, so one outsized batch does not keep its peak reserved
for the life of the worker. Neither has been measured on a GPU in this project yet.
"""

from __future__ import annotations

import torch

from handler.settings import HandlerSettings


def select(gpu_id: int | str | None, settings: HandlerSettings) -> torch.device:
    """``cuda:{gpu_id}`` when TorchServe gave the worker a GPU and CUDA is present, else the CPU."""
    if gpu_id is None or not torch.cuda.is_available():
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        return torch.device("cpu")
    device = torch.device(f"cuda:{gpu_id}")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if settings.gpu_memory_fraction:
        torch.cuda.set_per_process_memory_fraction(settings.gpu_memory_fraction, device)
    return device


def after_batch(device: torch.device, padded_tokens: int, settings: HandlerSettings) -> bool:
    """Release the allocator cache after an outsized batch; returns whether it did."""
    limit = settings.release_cache_above_tokens
    if device.type != "cuda" or not limit or padded_tokens <= limit:
        return False
    torch.cuda.empty_cache()
    return True
