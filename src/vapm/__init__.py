"""vapm: visual & acoustic process monitoring."""
from vapm.config.cpu_dispatch import pin_cpu_dispatch as _pin_cpu_dispatch

# First, before any vapm module imports NumPy or TensorFlow: they fix their CPU dispatch when they load, and
# these pins make every x86-64 CPU with AVX2 + FMA compute the same bits (docs/determinism.md).
_pin_cpu_dispatch()
