"""GPU utilization, memory and PCIe traffic sampled by NVML in a background thread.

The worker starts a sampler just before the timed region and stops it just after, so the time
series covers the measured forwards only. NVML's numbers are coarse by nature:
  * utilization is "a kernel was running during the last sample period", not "the GPU was busy"
    (one small kernel keeps it at 100%), so the report puts achieved TFLOP/s and GB/s beside it;
  * PCIe throughput is NVML's own 20 ms window per direction (each read blocks ~20 ms), so
    one sample costs ~40 ms and the interval cannot usefully go below ~50 ms;
  * memory used is the whole device's, other processes included.
Where NVML is missing (a CPU machine, no driver) the sampler is a no-op and says why in `note`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


@dataclass
class NvmlSeries:
    """What one sampler saw: parallel lists, `t_s` relative to the caller's time origin."""
    available: bool
    note: str = ""
    device_index: int | None = None
    device_name: str | None = None
    pci_bus_id: str | None = None
    t_s: list[float] = field(default_factory=list)
    gpu_util_pct: list[float] = field(default_factory=list)
    mem_used_gb: list[float] = field(default_factory=list)
    pcie_rx_gbps: list[float] = field(default_factory=list)  # into the GPU (host-to-device)
    pcie_tx_gbps: list[float] = field(default_factory=list)  # out of the GPU (device-to-host)

    def summary(self) -> dict:
        """Mean/max utilization, peak memory, mean PCIe rates; None where nothing was sampled."""
        def mean(xs):
            return sum(xs) / len(xs) if xs else None
        return {
            "gpu_util_mean": mean(self.gpu_util_pct),
            "gpu_util_max": max(self.gpu_util_pct) if self.gpu_util_pct else None,
            "gpu_mem_peak_gb": max(self.mem_used_gb) if self.mem_used_gb else None,
            "nvml_pcie_rx_gbps": mean(self.pcie_rx_gbps),
            "nvml_pcie_tx_gbps": mean(self.pcie_tx_gbps),
            "nvml_samples": len(self.t_s),
        }

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _nvml():
    """The pynvml module, initialised; raises with a readable reason when it cannot be."""
    import pynvml  # from the nvidia-ml-py package
    pynvml.nvmlInit()
    return pynvml


def driver_version() -> str | None:
    try:
        nv = _nvml()
        v = nv.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return None


def _handle_for(nv, device_index: int, pci_bus_id: str | None):
    """The NVML handle of the GPU that CUDA calls `device_index` in this process. NVML ignores
    CUDA_VISIBLE_DEVICES, so an index into that list is translated; a bus id, when the caller
    knows it, wins over both."""
    if pci_bus_id:
        return nv.nvmlDeviceGetHandleByPciBusId(pci_bus_id.encode())
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if device_index < len(visible):
        v = visible[device_index]
        if v.isdigit():
            return nv.nvmlDeviceGetHandleByIndex(int(v))
        return nv.nvmlDeviceGetHandleByUUID(v.encode())  # "GPU-..." (MIG ids are not sampled)
    return nv.nvmlDeviceGetHandleByIndex(device_index)


class NvmlSampler:
    """Usage: s = NvmlSampler(gpu_index); s.start(t0); ...timed work...; series = s.stop()."""

    def __init__(self, device_index: int | None, interval_s: float = 0.1, pci_bus_id: str | None = None):
        self.interval_s = max(0.05, float(interval_s))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.series = NvmlSeries(available=False, device_index=device_index, pci_bus_id=pci_bus_id)
        if device_index is None:
            self.series.note = "engine runs on the CPU; no GPU to sample"
            return
        try:
            self._nv = _nvml()
            self._handle = _handle_for(self._nv, device_index, pci_bus_id)
            name = self._nv.nvmlDeviceGetName(self._handle)
            self.series.device_name = name.decode() if isinstance(name, bytes) else str(name)
            self.series.available = True
        except Exception as e:  # no library, no driver, no such device
            self.series.note = f"NVML unavailable: {type(e).__name__}: {e}"

    def _sample_once(self) -> None:
        nv, h, s = self._nv, self._handle, self.series
        t = time.perf_counter() - self._t0
        util = nv.nvmlDeviceGetUtilizationRates(h).gpu
        mem = nv.nvmlDeviceGetMemoryInfo(h).used / 1e9
        try:  # KB/s over NVML's 20 ms window; some virtualised GPUs do not report it
            rx = nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES) * 1e3 / 1e9
            tx = nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES) * 1e3 / 1e9
        except Exception:
            rx = tx = float("nan")
        s.t_s.append(round(t, 4))
        s.gpu_util_pct.append(float(util))
        s.mem_used_gb.append(round(mem, 4))
        s.pcie_rx_gbps.append(rx)
        s.pcie_tx_gbps.append(tx)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t_next = time.perf_counter() + self.interval_s
            try:
                self._sample_once()
            except Exception as e:  # keep what was sampled; say why it ended
                self.series.note = f"sampling stopped early: {type(e).__name__}: {e}"
                return
            self._stop.wait(max(0.0, t_next - time.perf_counter()))

    def start(self, t0: float | None = None) -> None:
        """Begin sampling; timestamps are seconds since `t0` (a time.perf_counter() value)."""
        self._t0 = time.perf_counter() if t0 is None else t0
        if not self.series.available:
            return
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> NvmlSeries:
        """End sampling (the loop samples once at start, so even a short region has a point)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.series
