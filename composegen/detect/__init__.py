"""Hardware detection: NVML probing and parsers for saved nvidia-smi output."""
