"""Pre-flight: will this job fit on the GPUs of this machine (NVML), or on a catalog GPU?"""
