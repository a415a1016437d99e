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
    "SweepSpec",
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

Bool = StrictBool | Expr
"""true or false, or an expression whose value is a bool parameter (``"=hpet"``)."""

U32_MAX = 0xFFFFFFFF
U64_MAX = (1 << 64) - 1
MAX_CPUS = 64

# Bounded values: the bounds are in the JSON Schema and checked on literal values; the loader
# checks the values of expressions against the same bounds.
Count = Annotated[StrictInt, Field(ge=1, le=MAX_CPUS)] | Expr
"""CPUs or vCPUs: 1..64."""
CpuIndex = Annotated[StrictInt, Field(ge=0, le=MAX_CPUS - 1)] | Expr
"""A CPU or vCPU number: 0..63."""
Khz = Annotated[StrictInt, Field(ge=1, le=U32_MAX)] | Expr
"""A TSC frequency in kHz: 1..2**32-1 (a u32, as KVM_SET_TSC_KHZ takes it)."""
U64 = Annotated[StrictInt, Field(ge=0, le=U64_MAX)] | Expr
"""A u64 (a TSC value in cycles)."""
PosInt = Annotated[StrictInt, Field(ge=1)] | Expr
"""An integer >= 1."""
NonNegInt = Annotated[StrictInt, Field(ge=0)] | Expr
"""An integer >= 0."""
NonNeg = Annotated[StrictInt, Field(ge=0)] | Annotated[StrictFloat, Field(ge=0)] | Expr
"""A number >= 0."""
Positive = Annotated[StrictInt, Field(gt=0)] | Annotated[StrictFloat, Field(gt=0)] | Expr
"""A number > 0."""

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

    duration_s: Positive = Field(description="simulated seconds (> 0)")
    hz: Annotated[StrictInt, Field(ge=15, le=10_000)] | Expr = Field(
        250, description="CONFIG_HZ of every kernel (15..10000)"
    )
    sample_ms: PosInt = Field(10, description="guest clock sampling period in ms (>= 1)")
    profiles: StrictStr | list[StrictStr] = Field(
        default_factory=lambda: ["gtod", "series", "upstream"],
        description="profile name or list of names run by default (kvmclock profiles)",
    )
    switches: dict[str, StrictBool | StrictStr] = Field(
        default_factory=dict, description="switches flipped in every profile (--set wins)"
    )
    fault: StrictStr | None = Field(None, description="'none' or a fault to inject")
    spin_limit: PosInt = Field(
        100_000, description="spins before a kernel loop counts as a livelock (>= 1)"
    )
    seed: StrictInt = Field(0, description="seed when the command line gives none")


class HostSpec(_Model):
    """``[[host]]``: a physical machine (level 0) with its kernel and KVM."""

    name: Name
    cpus: Count = Field(description="CPUs (1..64)")
    tsc_khz: Khz = Field(description="nominal TSC kHz (1..2**32-1)")
    tsc_skew_us: NonNeg | None = Field(
        None, description="CPU TSCs start up to this many us apart (seeded; >= 0)"
    )
    tsc_skew_cycles: NonNegInt | None = Field(None, description="the same in cycles (>= 0)")
    drift_ppm: (
        Annotated[StrictInt, Field(gt=-1_000_000)]
        | Annotated[StrictFloat, Field(gt=-1_000_000)]
        | Expr
    ) = Field(0, description="true TSC rate error in ppm (> -1000000)")
    tsc_scaling: Literal["vmx", "svm", "none"] | Expr = Field(
        "vmx", description="the CPUs' TSC-scaling hardware: vmx, svm or none (or an expression)"
    )
    hpet: Bool = Field(True, description="an HPET")
    acpi_pm: Bool = Field(True, description="an ACPI PM timer")
    tsc_reliable: Bool = Field(
        False, description="tsc=reliable: the clocksource watchdog never checks the TSC"
    )
    uptime_s: NonNeg = Field(
        0,
        description="how long the host has been up when the scenario starts: its TSC and "
        "CLOCK_MONOTONIC/BOOTTIME start there (another boot time than the other hosts)",
    )
    nohz: Bool = Field(
        False,
        description="its kernel runs NO_HZ idle (CONFIG_NO_HZ_IDLE, nohz=on): the tick stops "
        "while its CPUs idle, the timekeeper is updated when a CPU wakes and at the latest "
        "after the clocksource's max_idle_ns; false: the periodic tick",
    )


class VmSpec(_Model):
    """``[[vm]]``: a VM created by a VMM on ``host`` (a host, or a VM with ``kvm = true``:
    nested), its guest kernel booted on kvm-clock unless ``clocksource`` says otherwise."""

    name: Name
    host: Name
    vcpus: Count = Field(description="vCPUs (1..64)")
    tsc_khz: Khz | None = Field(
        None, description="guest TSC kHz (KVM_SET_TSC_KHZ, 1..2**32-1); none = host's"
    )
    kvm: Bool = Field(False, description="the guest loads KVM (can host nested VMs)")
    created_at_s: NonNeg | None = Field(
        None,
        description="creation time; without it the VM is created at start (the k-th such VM "
        "at k ms)",
    )
    clocksource: Literal["kvm-clock", "tsc", "hpet", "acpi_pm", "jiffies"] | Expr | None = Field(
        None, description="the guest's clocksource= override"
    )
    invariant_tsc: Bool = Field(False, description="CPUID invariant TSC (nonstop_tsc)")
    constant_tsc: Bool = Field(True, description="CPUID constant_tsc")
    tsc_reliable: Bool = Field(False, description="tsc_reliable (no clocksource watchdog)")
    tsc_adjust: Bool = Field(
        False,
        description="CPUID TSC_ADJUST (with invariant_tsc, 5.16+ kernels stop the "
        "clocksource watchdog on the TSC)",
    )
    kvmclock: Bool = Field(True, description="the kvm-clock paravirt feature")
    stable_bit: Bool = Field(True, description="KVM_FEATURE_CLOCKSOURCE_STABLE_BIT")
    hpet: Bool = Field(False, description="an emulated HPET")
    acpi_pm: Bool = Field(False, description="an emulated ACPI PM timer")
    nohz: Bool = Field(
        False,
        description="its kernel runs NO_HZ idle (CONFIG_NO_HZ_IDLE, nohz=on): the tick stops "
        "while its CPUs idle, the timekeeper is updated when a CPU wakes and at the latest "
        "after the clocksource's max_idle_ns; false: the periodic tick",
    )


# -- recipes --------------------------------------------------------------------------------
class QemuRecipe(_Model):
    name: Literal["qemu"]


class FirecrackerRecipe(_Model):
    name: Literal["firecracker"]
    clock_realtime: Bool | None = Field(
        None, description="KVM_SET_CLOCK with KVM_CLOCK_REALTIME on restore (5.16+)"
    )
    kvmclock_ctrl: Literal["before-resume", "at-pause"] | Expr | None = Field(
        None, description="when KVM_KVMCLOCK_CTRL is called (1.14+: before-resume)"
    )


class CloudHypervisorRecipe(_Model):
    name: Literal["cloud-hypervisor"]
    tsc_offsets: Literal["per-vcpu", "shared"] | Expr | None = Field(
        None, description="shared (the fix, default) or per-vcpu (before it)"
    )
    vcpu_restore_us: NonNegInt | None = Field(
        None, description="time between vCPU restores (us, >= 0)"
    )


class NaiveRecipe(_Model):
    name: Literal["naive"]
    gap_ms: NonNeg | None = Field(None, description="time between vCPU restores (ms, >= 0)")


RecipeTable = Annotated[
    QemuRecipe | FirecrackerRecipe | CloudHypervisorRecipe | NaiveRecipe,
    Field(discriminator="name"),
]
Recipe = Literal["qemu", "firecracker", "cloud-hypervisor", "naive"] | Expr | RecipeTable


# -- timeline actions -----------------------------------------------------------------------
class _Action(_Model):
    at_s: NonNeg = Field(description="when, in simulated seconds (>= 0)")
    note: StrictStr | None = Field(
        None, description="key-moment text instead of the default ({param} is replaced)"
    )


class TscWrite(_Action):
    """MSR_IA32_TSC write on ``vcpu`` (or on every vCPU but ``relative_to``: ``"all"``) of
    ``value``, or of ``relative_to``'s current TSC plus ``ahead_ms`` of the VM's kHz."""

    action: Literal["tsc_write"]
    vm: Name
    vcpu: CpuIndex | Literal["all"]
    value: U64 | None = None
    relative_to: CpuIndex | None = None
    ahead_ms: Num = 0
    host_initiated: Bool = True


class VcpuHotplug(_Action):
    """KVM_CREATE_VCPU on a running VM; the guest registers kvm-clock on the new CPU."""

    action: Literal["vcpu_hotplug"]
    vm: Name


class VcpuMigrate(_Action):
    """Move ``vcpu``'s thread to host CPU ``host_cpu``."""

    action: Literal["vcpu_migrate"]
    vm: Name
    vcpu: CpuIndex
    host_cpu: CpuIndex


class RotateVcpus(_Action):
    """From ``at_s`` on, every ``every_ms``: each vCPU moves one host CPU further."""

    action: Literal["rotate_vcpus"]
    vm: Name
    every_ms: Positive


class TscJump(_Action):
    """From ``at_s`` on, the host CPUs' TSCs are ``cycles`` (or ``ms`` of the host's kHz)
    further (negative: back)."""

    action: Literal["tsc_jump"]
    host: Name
    cpus: list[CpuIndex] | Literal["all"] = "all"
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
    realtime_lag_s: NonNeg | None = None


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
    downtime_ms: NonNeg = Field(description="the guest stopped (ms, >= 0)")
    precopy_s: NonNeg = Field(0, description="the guest runs while memory is copied (s, >= 0)")


class HostSuspend(_Action):
    action: Literal["host_suspend"]
    host: Name
    duration_s: Positive = Field(description="how long the host sleeps (s, > 0)")
    tsc_after_resume_cycles: U64 | None = Field(
        None, description="the TSC on resume (cycles; default: the host model's)"
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


# -- sweep ----------------------------------------------------------------------------------
SweepValue = StrictBool | StrictInt | StrictFloat | StrictStr


class SweepSpec(_Model):
    """``[sweep]``: the runs ``kvmclock sweep FILE`` makes when its command line gives no
    ``--grid``/``--range``: the cartesian product of ``grid`` and ``ranges`` (parameters of
    ``[params]``), for every seed ``0..seeds-1`` and every profile."""

    grid: dict[str, Annotated[list[SweepValue], Field(min_length=1)]] = Field(
        default_factory=dict,
        description="parameter -> the values it takes (each checked like --param)",
    )
    ranges: dict[str, StrictStr] = Field(
        default_factory=dict,
        description="parameter -> \"START:STOP:STEP\" (exact decimals: START, START+STEP, ... "
        "up to STOP included when it lands on it; STEP > 0)",
    )
    seeds: Annotated[StrictInt, Field(ge=1)] = Field(
        1, description="runs per point, with seeds 0..seeds-1 (>= 1)"
    )
    profiles: StrictStr | list[StrictStr] | None = Field(
        None, description="profile name or list of names; none = run.profiles"
    )


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
    sweep: SweepSpec | None = Field(
        None, description="the runs of `kvmclock sweep FILE` (docs/sweeps.md)"
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the file format, for editors."""
    schema = ScenarioModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
