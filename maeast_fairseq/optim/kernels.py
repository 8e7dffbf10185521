"""Which optimizer kernels this torch has (pure torch: the benchmarks use it without fairseq)."""


def fused_supported(tensors) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` has a kernel for all of ``tensors`` (floating point, on CPU or
    CUDA; CPU needs torch >= 2.4)."""
    if not tensors:
        return False
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: CUDA only
        devices = {"cuda"}
    return all(p.device.type in devices and p.is_floating_point() for p in tensors)
