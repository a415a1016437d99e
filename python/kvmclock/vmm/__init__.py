"""A VMM: the userspace process that drives one VM through KVM's ioctls.

KVM turns a kernel into machines; a VMM is what asks it to: it creates the VM and its vCPUs,
starts the vCPU threads, and later pauses them, saves what it needs to rebuild the VM
elsewhere, and restores it (each VMM in its own way: the recipes of :mod:`kvmclock.vmm.recipes`).
"""

from kvmclock.vmm import recipes
from kvmclock.vmm.lifecycle import Lifecycle
from kvmclock.vmm.recipes import Recipe, RecipeError
from kvmclock.vmm.snapshot import VcpuSnapshot, VmSnapshot
from kvmclock.vmm.vmm import Vmm

__all__ = [
    "Lifecycle",
    "Recipe",
    "RecipeError",
    "VcpuSnapshot",
    "VmSnapshot",
    "Vmm",
    "recipes",
]
