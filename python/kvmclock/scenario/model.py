"""The scenario file format as pydantic v2 models (strict types, unknown keys refused).

A scenario file is TOML (docs/scenarios.md).  These models check its *structure*: every key
known, every value of the right type, one model per timeline action (a union discriminated by
``action``).  Values that depend on ``[params]`` are written as expressions (a string
starting with ``=``, :mod:`kvmclock.scenario.expr`); what they mean together (times in order,
VMs on known hosts, a snapshot taken before it is restored, ...) is checked by
:mod:`kvmclock.scenario.loader` once the expressions have values.  The JSON Schema of the
format (``kvmclock scenarios --schema``, ``scenario.schema.json``) is generated from
:class:`ScenarioModel`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

__all__ = [
    "ACTION_MODELS",
    "LIFECYCLE_ACTIONS",
    "RECIPE_NAMES",
    "Action",
    "HostSpec",
    "ParamSpec",
    "RunSpec",
    "ScenarioModel",
    "VmSpec",
    "json_schema",
]

Expr = Annotated[
    str,
    StringConstraints(pattern=r"^="),
    Field(
        description="an expression over [params]: '=' then numbers, parameter names, "
        "+ - * / //, unary - and parentheses (evaluated exactly)"
    ),
]
"""A value computed from the parameters, e.g. ``"=unstable_at_s - 0.05"``."""

Int = StrictInt | Expr
"""An integer, or an expression whose value is an integer."""

Num = StrictInt | StrictFloat | Expr
"""A number (a float is taken by its decimal text, exactly), or an expression."""

Name = Annotated[StrictStr, StringConstraints(min_length=1)]

RECIPE_NAMES = ("qemu", "firecracker", "cloud-hypervisor", "naive")
CLOCKSOURCES = ("kvm-clock", "tsc", "hpet", "acpi_pm", "jiffies")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- params ---------------------------------------------------------------------------------
class ParamSpec(_Model):
    """A parameter declared as a table: its default and the values it may take.

    ``type``: ``int`` (``min``/``max`` inclusive), ``number``, ``seconds`` (a duration or time
    in s: int, float or a decimal string, ``>= min`` or ``> min`` with ``exclusive_min``; min
    defaults to 0), ``str`` (``choices`` lists the allowed values), ``bool``.  Without
    ``type`` it is the default's type (int, number, str, bool).
    """

    default: StrictBool | StrictInt | StrictFloat | StrictStr
    type: Literal["int", "number", "seconds", "str", "bool"] | None = None
    min: StrictInt | StrictFloat | None = None
    max: StrictInt | StrictFloat | None = None
    exclusive_min: StrictBool = False
    choices: list[StrictStr] | None = None
    doc: StrictStr | None = None


ParamDeclaration = ParamSpec | StrictBool | StrictInt | StrictFloat | StrictStr


# -- run, hosts, VMs ------------------------------------------------------------------------
class RunSpec(_Model):
    """``[run]``: how long, how often, under which profiles and switches."""

    duration_s: Num = Field(description="simulated seconds (> 0)")
    hz: Int = Field(250, description="CONFIG_HZ of every kernel (1..10000)")
    sample_ms: Int = Field(10, description="guest clock sampling period in ms")
    profiles: StrictStr | list[StrictStr] = Field(
        default_factory=lambda: ["gtod", "series", "upstream"],
        description="profile name or list of names run by default (kvmclock profiles)",
    )
    switches: dict[str, StrictBool | StrictStr] = Field(
        default_factory=dict, description="switches flipped in every profile (--set wins)"
    )
    fault: StrictStr | None = Field(None, description="'none' or a fault to inject")
    spin_limit: Int = Field(100_000, description="spins before a kernel loop counts as a livelock")
    seed: StrictInt = Field(0, description="seed when the command line gives none")


class HostSpec(_Model):
    """``[[host]]``: a physical machine (level 0) with its kernel and KVM."""

    name: Name
    cpus: Int = Field(description="CPUs (1..64)")
    tsc_khz: Int = Field(description="nominal TSC kHz (1..2**32-1)")
    tsc_skew_us: Num | None = Field(
        None, description="CPU TSCs start up to this many us apart (seeded)"
    )
    tsc_skew_cycles: Int | None = Field(None, description="the same in cycles")
    drift_ppm: Num = Field(0, description="true TSC rate error in ppm (> -1000000)")
    tsc_scaling: Literal["vmx", "svm", "none"] | Expr = Field(
        "vmx", description="the CPUs' TSC-scaling hardware: vmx, svm or none (or an expression)"
    )
    hpet: StrictBool = True
    acpi_pm: StrictBool = True
    uptime_s: Num = Field(
        0,
        description="how long the host has been up when the scenario starts: its TSC and "
        "CLOCK_MONOTONIC/BOOTTIME start there (another boot time than the other hosts)",
    )


class VmSpec(_Model):
    """``[[vm]]``: a VM created by a VMM on ``host`` (a host, or a VM with ``kvm = true``:
    nested), its guest kernel booted on kvm-clock unless ``clocksource`` says otherwise."""

    name: Name
    host: Name
    vcpus: Int = Field(description="vCPUs (1..64)")
    tsc_khz: Int | None = Field(None, description="guest TSC kHz (KVM_SET_TSC_KHZ); none = host's")
    kvm: StrictBool = Field(False, description="the guest loads KVM (can host nested VMs)")
    created_at_s: Num | None = Field(
        None,
        description="creation time; without it the VM is created at start (the k-th such VM "
        "at k ms)",
    )
    clocksource: Literal["kvm-clock", "tsc", "hpet", "acpi_pm", "jiffies"] | None = Field(
        None, description="the guest's clocksource= override"
    )
    invariant_tsc: StrictBool = Field(False, description="CPUID invariant TSC (nonstop_tsc)")
    constant_tsc: StrictBool = True
    tsc_reliable: StrictBool = False
    kvmclock: StrictBool = Field(True, description="the kvm-clock paravirt feature")
    stable_bit: StrictBool = Field(True, description="KVM_FEATURE_CLOCKSOURCE_STABLE_BIT")
    hpet: StrictBool = Field(False, description="an emulated HPET")
    acpi_pm: StrictBool = Field(False, description="an emulated ACPI PM timer")


# -- recipes --------------------------------------------------------------------------------
class QemuRecipe(_Model):
    name: Literal["qemu"]


class FirecrackerRecipe(_Model):
    name: Literal["firecracker"]
    clock_realtime: StrictBool | None = Field(
        None, description="KVM_SET_CLOCK with KVM_CLOCK_REALTIME on restore (5.16+)"
    )
    kvmclock_ctrl: Literal["before-resume", "at-pause"] | None = Field(
        None, description="when KVM_KVMCLOCK_CTRL is called (1.14+: before-resume)"
    )


class CloudHypervisorRecipe(_Model):
    name: Literal["cloud-hypervisor"]
    tsc_offsets: Literal["per-vcpu", "shared"] | None = Field(
        None, description="shared (the fix, default) or per-vcpu (before it)"
    )
    vcpu_restore_us: Int | None = Field(None, description="time between vCPU restores (us)")


class NaiveRecipe(_Model):
    name: Literal["naive"]
    gap_ms: Num | None = Field(None, description="time between vCPU restores (ms)")


RecipeTable = Annotated[
    QemuRecipe | FirecrackerRecipe | CloudHypervisorRecipe | NaiveRecipe,
    Field(discriminator="name"),
]
Recipe = Literal["qemu", "firecracker", "cloud-hypervisor", "naive"] | RecipeTable


# -- timeline actions -----------------------------------------------------------------------
class _Action(_Model):
    at_s: Num = Field(description="when, in simulated seconds")
    note: StrictStr | None = Field(
        None, description="key-moment text instead of the default ({param} is replaced)"
    )


class TscWrite(_Action):
    """MSR_IA32_TSC write on ``vcpu`` (or on every vCPU but ``relative_to``: ``"all"``) of
    ``value``, or of ``relative_to``'s current TSC plus ``ahead_ms`` of the VM's kHz."""

    action: Literal["tsc_write"]
    vm: Name
    vcpu: Int | Literal["all"]
    value: Int | None = None
    relative_to: Int | None = None
    ahead_ms: Num = 0
    host_initiated: StrictBool = True


class VcpuHotplug(_Action):
    """KVM_CREATE_VCPU on a running VM; the guest registers kvm-clock on the new CPU."""

    action: Literal["vcpu_hotplug"]
    vm: Name


class VcpuMigrate(_Action):
    """Move ``vcpu``'s thread to host CPU ``host_cpu``."""

    action: Literal["vcpu_migrate"]
    vm: Name
    vcpu: Int
    host_cpu: Int


class RotateVcpus(_Action):
    """From ``at_s`` on, every ``every_ms``: each vCPU moves one host CPU further."""

    action: Literal["rotate_vcpus"]
    vm: Name
    every_ms: Num


class TscJump(_Action):
    """From ``at_s`` on, the host CPUs' TSCs are ``cycles`` (or ``ms`` of the host's kHz)
    further (negative: back)."""

    action: Literal["tsc_jump"]
    host: Name
    cpus: list[Int] | Literal["all"] = "all"
    cycles: Int | None = None
    ms: Num | None = None


class SetClock(_Action):
    """KVM_SET_CLOCK: clock = the VM's current kvm-clock + ``step_s``; ``flags`` may hold
    ``realtime`` (KVM_CLOCK_REALTIME, 5.16+) with a realtime ``realtime_lag_s`` behind the
    host's."""

    action: Literal["set_clock"]
    vm: Name
    flags: list[Literal["realtime"]] = Field(default_factory=list)
    step_s: Num = 0
    realtime_lag_s: Num | None = None


class GetClock(_Action):
    """KVM_GET_CLOCK; the result is a key moment."""

    action: Literal["get_clock"]
    vm: Name


class TickInReadSection(_Action):
    """A TSC write on ``vm``'s vCPU 0 asks for a masterclock update; while KVM reads the
    host clock, a tick on another host CPU updates the timekeeper (at the tick at or before
    ``at_s``)."""

    action: Literal["tick_in_read_section"]
    host: Name
    vm: Name


class Moment(_Action):
    """A free text key moment (at the level of ``vm`` or ``host``; level 0 without)."""

    action: Literal["moment"]
    text: StrictStr
    vm: Name | None = None
    host: Name | None = None


class Pause(_Action):
    action: Literal["pause"]
    vm: Name
    recipe: Recipe = "qemu"


class Resume(_Action):
    action: Literal["resume"]
    vm: Name
    recipe: Recipe | None = Field(None, description="default: the recipe of the pause")


class Snapshot(_Action):
    action: Literal["snapshot"]
    vm: Name
    name: Name
    recipe: Recipe = "qemu"


class Restore(_Action):
    action: Literal["restore"]
    snapshot: Name
    host: Name
    recipe: Recipe = "qemu"


class Migrate(_Action):
    action: Literal["migrate"]
    vm: Name
    to_host: Name
    recipe: Recipe = "qemu"
    downtime_ms: Num
    precopy_s: Num = 0


class HostSuspend(_Action):
    action: Literal["host_suspend"]
    host: Name
    duration_s: Num
    tsc_after_resume_cycles: Int | None = Field(
        None, description="the TSC on resume (default: the host model's)"
    )


ACTION_MODELS: tuple[type[_Action], ...] = (
    TscWrite,
    VcpuHotplug,
    VcpuMigrate,
    RotateVcpus,
    TscJump,
    SetClock,
    GetClock,
    TickInReadSection,
    Moment,
    Pause,
    Resume,
    Snapshot,
    Restore,
    Migrate,
    HostSuspend,
)
LIFECYCLE_ACTIONS = ("pause", "resume", "snapshot", "restore", "migrate", "host_suspend")

Action = Annotated[
    TscWrite
    | VcpuHotplug
    | VcpuMigrate
    | RotateVcpus
    | TscJump
    | SetClock
    | GetClock
    | TickInReadSection
    | Moment
    | Pause
    | Resume
    | Snapshot
    | Restore
    | Migrate
    | HostSuspend,
    Field(discriminator="action"),
]


class ScenarioModel(_Model):
    """A whole scenario file."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title="kvmclock scenario",
    )

    name: Name
    description: StrictStr = ""
    params: dict[str, ParamDeclaration] = Field(default_factory=dict)
    run: RunSpec
    host: list[HostSpec] = Field(min_length=1)
    vm: list[VmSpec] = Field(default_factory=list)
    timeline: list[Action] = Field(default_factory=list)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the file format, for editors."""
    schema = ScenarioModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
