"""Programs built on the rig, not part of its library: the demonstrations and benchmarks.

- :mod:`qgpu.tools.demo` -- ``make demo`` / ``qgpu demo``: DMA and mmap in a booted guest,
  seen from both sides
- :mod:`qgpu.tools.demo_device` -- ``make demo-device``: the device alone, over qtest
- :mod:`qgpu.tools.bench_all` -- ``make bench``: the sections below, then results.json,
  report.html (:mod:`qgpu.tools.bench_report`) and a summary
- :mod:`qgpu.tools.bench` -- the DMA engine beside host memcpy and edu
- :mod:`qgpu.tools.bench_driver` -- DMA through the driver in a guest per DMA mode, beside
  the guest's memcpy (``qgpu-bench dma`` in the guest)
- :mod:`qgpu.tools.bench_guest` -- boot time per kernel beside stock's, write-combined
  VRAM against RAM in a guest
- :mod:`qgpu.tools.bench_restore` -- restore from a template against a cold boot
- :mod:`qgpu.tools.bench_compare` -- ``make bench-compare``: two results files, as ratios
- :mod:`qgpu.tools.bench_boot` -- ``make boot-bench``: N boots of one image to its shell
"""
