"""Profiles: which kernel the model runs, as a frozen set of named behaviour switches.

A behaviour of the kernel that changed over time is a :class:`Switch` (like a Kconfig entry):
a name, the values it can take, one line of help, and the kernel release and commit that
brought the behaviour. A :class:`Profile` gives every switch a value. Model code asks the
switch (``if cfg.guest_tsc_write_syncs:``), never the profile's name, so a user can run "Linux
6.18 without the 6.8 re-anchor rule" as ``PROFILES["upstream"].with_(masterclock_request=
"on_update")``, or ``--set masterclock_request=on_update`` on the command line.

The profiles:

* ``gtod``: Linux 4.13 (July 2017), the kernel the 2017 series patched. KVM keeps a shadow
  copy of the timekeeper, refreshed through the pvclock_gtod notifier on every timekeeping
  update, and grants masterclock only when the host clocksource is the TSC.
* ``series``: 4.13 with the 11 patches of "make L2's kvm-clock stable, get rid of
  pvclock_gtod": KVM asks the timekeeper directly, listens to a clocksource change chain, and a
  stable kvm-clock counts as a stable host clock, so an L1 on kvm-clock can give L2 masterclock.
* ``upstream``: Linux 6.18, the shape of KVM's clock code today.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "PROFILES",
    "REQUIRES",
    "SWITCHES",
    "Profile",
    "Switch",
    "SwitchValue",
    "parse_assignments",
    "profiles_json",
    "profiles_table",
    "resolve_profile",
]

SwitchValue = bool | str


@dataclass(frozen=True)
class Switch:
    """One kernel behaviour that changed over time.

    ``values`` are the values it can take (``(False, True)`` for an on/off behaviour, else
    names); ``since`` is the first release with the newer behaviour (``"series"`` for the 2017
    patches, which were never merged) and ``commit`` its commit (or patch) that introduced it;
    ``where`` names the kernel file and function that does it.
    """

    name: str
    values: tuple[SwitchValue, ...]
    help: str
    since: str
    commit: str
    where: str

    def parse(self, text: str) -> SwitchValue:
        """The value ``text`` names (``on/off/true/false/1/0/yes/no`` for on/off switches).

        Raises ValueError naming the switch and its valid values.
        """
        if self.values == (False, True):
            low = text.strip().lower()
            if low in ("1", "on", "true", "yes", "y"):
                return True
            if low in ("0", "off", "false", "no", "n"):
                return False
            raise ValueError(
                f"switch {self.name}: {text!r} is not a valid value; valid: on, off"
            )
        for v in self.values:
            if text.strip() == v:
                return v
        raise ValueError(
            f"switch {self.name}: {text!r} is not a valid value; valid: "
            + ", ".join(str(v) for v in self.values)
        )

    def check(self, value: object) -> SwitchValue:
        """``value`` if it is one of ``values`` (bools compared as bools), else ValueError."""
        for v in self.values:
            if type(v) is type(value) and v == value:
                return v
        raise ValueError(
            f"switch {self.name}: {value!r} is not a valid value; valid: "
            + ", ".join(_show(v) for v in self.values)
        )


def _show(value: SwitchValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _switches(*items: Switch) -> Mapping[str, Switch]:
    return MappingProxyType({s.name: s for s in items})


ONOFF: tuple[SwitchValue, ...] = (False, True)

SWITCHES: Mapping[str, Switch] = _switches(
    # -- the host kernel's timekeeping ---------------------------------------------------------
    Switch(
        "pvclock_gtod_chain",
        ONOFF,
        "timekeeping_update calls the pvclock_gtod notifier chain on every update (KVM's shadow "
        "copy of the timekeeper listens to it)",
        "3.8",
        "16e8d74d2da9",
        "kernel/time/timekeeping.c update_pvclock_gtod",
    ),
    Switch(
        "clocksource_change_chain",
        ONOFF,
        "the timekeeper calls a clocksource change chain on a clocksource switch, at first "
        "registration and when kvm-clock's stable bit flips, never on ticks",
        "series",
        "series patches 07-08",
        "kernel/time/timekeeping.c clocksource_changes_notify",
    ),
    Switch(
        "tk_delta_overflow_safe",
        ONOFF,
        "a clock read whose cycles since the last tick exceed the clocksource's max_cycles "
        "converts them with a 128-bit multiply (and forward_now in max_cycles chunks) "
        "instead of wrapping delta * mult at 2**64 (every 2**41 ns on kvm-clock)",
        "6.10",
        "fcf190c36914 (timekeeping: Make delta calculation overflow safe)",
        "kernel/time/timekeeping.c timekeeping_cycles_to_ns, timekeeping_forward_now",
    ),
    # -- KVM: where the host clock comes from ---------------------------------------------------
    Switch(
        "kvm_host_clock",
        ("pvclock_gtod_copy", "timekeeper"),
        "how KVM reads the host clock for the master pair: its own shadow copy of the "
        "timekeeper (pvclock_gtod_data) or the timekeeper itself under tk_core.seq",
        "series",
        "series patch 09",
        "arch/x86/kvm/x86.c kvm_get_time_and_clockread",
    ),
    Switch(
        "stable_pvclock_host",
        ONOFF,
        "a host on kvm-clock whose record carries PVCLOCK_TSC_STABLE_BIT counts as a stable host "
        "clock, so an L1 on kvm-clock can give its guests masterclock",
        "series",
        "series patch 11",
        "arch/x86/kvm/x86.c clocksource_stable",
    ),
    Switch(
        "kvmclock_base",
        ("boot", "raw"),
        "the host clock kvmclock counts from: ktime_get_boot_ns (NTP-slewed) or "
        "CLOCK_MONOTONIC_RAW plus the boot offset",
        "5.5",
        "53fafdbb8b21",
        "arch/x86/kvm/x86.c get_kvmclock_base_ns",
    ),
    Switch(
        "masterclock_sync",
        ("spinlock", "seqcount"),
        "readers of the master pair take pvclock_gtod_sync_lock, or retry on the pvclock_sc "
        "seqcount written under tsc_write_lock",
        "5.16",
        "548da50f7ffe",
        "arch/x86/kvm/x86.c kvm_start_pvclock_update",
    ),
    # -- KVM: TSC writes and matching -----------------------------------------------------------
    Switch(
        "guest_tsc_write_syncs",
        ONOFF,
        "a guest's own MSR_IA32_TSC write goes through the synchronisation logic (on), or only "
        "adjusts its offset and IA32_TSC_ADJUST (off: only userspace writes synchronise)",
        "5.10",
        "0c899c25d754",
        "arch/x86/kvm/x86.c kvm_set_msr_common",
    ),
    Switch(
        "user_set_tsc",
        ONOFF,
        "the 1 s matching window applies only after userspace has set a TSC; a write of 0 "
        "always synchronises",
        "6.7",
        "bf328e22e472",
        "arch/x86/kvm/x86.c kvm_synchronize_tsc",
    ),
    Switch(
        "masterclock_request",
        ("on_update", "toggle_or_new_generation"),
        "a TSC write requests a masterclock update whenever masterclock is on (or could come "
        "on), or only when it must toggle or a new TSC generation starts",
        "6.8",
        "c52ffadc65e2",
        "arch/x86/kvm/x86.c kvm_track_tsc_matching",
    ),
    # -- KVM: userspace API ---------------------------------------------------------------------
    Switch(
        "kvm_clock_realtime",
        ONOFF,
        "KVM_GET_CLOCK returns realtime and host TSC (flags REALTIME|HOST_TSC) when masterclock "
        "is on; KVM_SET_CLOCK accepts every valid flag and acts on REALTIME",
        "5.16",
        "c68dc1b577ea",
        "arch/x86/kvm/x86.c __get_kvmclock, kvm_vm_ioctl_set_clock",
    ),
    Switch(
        "vcpu_tsc_offset_attr",
        ONOFF,
        "the KVM_VCPU_TSC_OFFSET vCPU attribute reads and sets the L1 TSC offset",
        "5.16",
        "828ca89628bf",
        "arch/x86/kvm/x86.c kvm_arch_tsc_set_attr",
    ),
    Switch(
        "vm_tsc_khz",
        ONOFF,
        "KVM_SET_TSC_KHZ is also a VM ioctl: the default frequency of vCPUs created after it",
        "5.18",
        "ffbb61d09fc5",
        "arch/x86/kvm/x86.c kvm_arch_vm_ioctl",
    ),
    Switch(
        "nested_tsc_scaling",
        ONOFF,
        "KVM offers TSC scaling to its guests' KVM (nested VMX/SVM), and an L2 guest's TSC "
        "scaling ratio and offset compose with L1's (L1 ratio x L2 ratio); off: L1's KVM has "
        "no TSC scaling",
        "5.14",
        "d041b5ea9335",
        "arch/x86/kvm/x86.c kvm_calc_nested_tsc_multiplier",
    ),
    Switch(
        "tiny_ratio_clamp",
        ONOFF,
        "a scaled guest frequency that rounds to 0 kHz is taken as 1 kHz instead of spinning "
        "in kvm_get_time_scale",
        "6.16",
        "tgt_tsc_khz ? : 1 (kvm_guest_time_update)",
        "arch/x86/kvm/x86.c kvm_guest_time_update",
    ),
    Switch(
        "wall_clock",
        ("boottime", "single_tsc_read"),
        "MSR_KVM_WALL_CLOCK's epoch from the host boot time, or from one TSC read giving "
        "realtime and kvmclock together",
        "6.7",
        "kvm_get_wall_clock_epoch",
        "arch/x86/kvm/x86.c kvm_write_wall_clock",
    ),
    # -- KVM: host suspend -----------------------------------------------------------------------
    Switch(
        "pm_notifier",
        ONOFF,
        "on host suspend (PM_SUSPEND_PREPARE) KVM's per-VM PM notifier marks every kvmclock "
        "vCPU paused, so PVCLOCK_GUEST_STOPPED reaches the guest at its next entry",
        "5.14",
        "7d62874f69d7 (with 2fdef3a2ae01, the generic kvm_pm_notifier)",
        "arch/x86/kvm/x86.c kvm_arch_pm_notifier",
    ),
    # -- the guest kernel -----------------------------------------------------------------------
    Switch(
        "kvmclock_rating",
        ("always_400", "299_if_invariant_tsc"),
        "kvm-clock registers with rating 400, or with 299 (below tsc's 300, so the guest picks "
        "tsc) when the guest sees CONSTANT_TSC and NONSTOP_TSC and the TSC is not unstable",
        "5.1",
        "7539b174aef4",
        "arch/x86/kernel/kvmclock.c kvmclock_init",
    ),
    Switch(
        "clocksource_watchdog",
        ("4.13", "6.18"),
        "the clocksource watchdog's verdict: skew over WATCHDOG_THRESHOLD (62.5 ms) per 0.5 s "
        "(4.13), or over the sum of both uncertainty margins (500 us for tsc/kvm-clock/hpet) "
        "after a wd-cs-wd read-back with retries, long intervals skipped (6.18.0)",
        "5.14",
        "db3a34e17433 (read-back retries, 5.14), 2e27e793e280 (uncertainty margins) and later",
        "kernel/time/clocksource.c clocksource_watchdog, cs_watchdog_read",
    ),
    Switch(
        "tsc_watchdog_exemption",
        ONOFF,
        "the watchdog does not verify tsc (no CLOCK_SOURCE_MUST_VERIFY) on a machine with "
        "CONSTANT_TSC, NONSTOP_TSC and TSC_ADJUST and at most 4 packages",
        "5.16",
        "b50db7095fe0 (4 packages since 233756a640be)",
        "arch/x86/kernel/tsc.c check_system_tsc_reliable",
    ),
    # -- trace text -----------------------------------------------------------------------------
    Switch(
        "trace_format",
        ("hostclock_symbol", "hostclock_stable"),
        "the host clock in kvm_update_master_clock/kvm_track_tsc: the vclock mode as a "
        "host_clocks symbol ('hostclock tsc'; 6.18 names the same table VDSO_CLOCKMODE_*, "
        "with the same numbers and text) or the series' bool ('hostclock stable 1')",
        "series",
        "series patch 09",
        "arch/x86/kvm/trace.h",
    ),
    Switch(
        "pvclock_trace_version",
        ("odd", "final"),
        "kvm_pvclock_update traces the record with the odd in-between version before the "
        "full write (4.13 kvm_setup_pvclock_page), or with the final even version after it",
        "5.18",
        "KVM: x86: Use gfn_to_pfn_cache for pv_time (kvm_setup_guest_pvclock)",
        "arch/x86/kvm/x86.c kvm_setup_guest_pvclock",
    ),
)


#: Combinations that cannot run: (switch, value, needs switch, needs value, why).
REQUIRES: tuple[tuple[str, SwitchValue, str, SwitchValue, str], ...] = (
    (
        "kvm_host_clock",
        "pvclock_gtod_copy",
        "pvclock_gtod_chain",
        True,
        "the shadow copy is refreshed only through the pvclock_gtod chain",
    ),
    (
        "kvm_host_clock",
        "timekeeper",
        "clocksource_change_chain",
        True,
        "without the shadow copy KVM learns of clocksource changes only through that chain",
    ),
    (
        "stable_pvclock_host",
        True,
        "kvm_host_clock",
        "timekeeper",
        "only the timekeeper read reports the TSC stamp of a kvm-clock read",
    ),
)


@dataclass(frozen=True)
class Profile:
    """A named, frozen set of switch values (every switch of :data:`SWITCHES` has one).

    ``kernel`` is the release it models; ``changed`` lists the switches a user flipped from
    the base profile (empty for the three built-in ones).
    """

    name: str
    kernel: str
    description: str
    values: Mapping[str, SwitchValue]
    changed: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        missing = [n for n in SWITCHES if n not in self.values]
        unknown = [n for n in self.values if n not in SWITCHES]
        if missing or unknown:
            raise ValueError(
                f"profile {self.name}: "
                + (f"missing switches {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown switches {unknown}" if unknown else "")
            )
        for n, v in self.values.items():
            SWITCHES[n].check(v)
        for n, v, need, need_v, why in REQUIRES:
            if self.values[n] == v and self.values[need] != need_v:
                raise ValueError(
                    f"profile {self.name}: {n}={_show(v)} needs {need}={_show(need_v)} ({why})"
                )
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        # each switch also as a plain attribute (``cfg.kvmclock_base``): KVM and the
        # timekeeper ask them on every vCPU entry, and __getattr__ costs a call per ask
        for n, v in self.values.items():
            object.__setattr__(self, n, v)

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are neither dataclass fields nor switches
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"profile has no switch {name!r}")

    def __getitem__(self, name: str) -> SwitchValue:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(_unknown_switch(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def with_(self, **changes: SwitchValue) -> Profile:
        """A copy with some switches changed; its name records them
        (``upstream[masterclock_request=on_update]``). Raises ValueError for an unknown switch
        or an invalid value."""
        for n, v in changes.items():
            if n not in SWITCHES:
                raise ValueError(_unknown_switch(n))
            SWITCHES[n].check(v)
        vals = dict(self.values)
        vals.update(changes)
        base = self.name.split("[", 1)[0]
        # the name records only what differs from the built-in profile it came from
        origin = PROFILES.get(base)
        changed = tuple(
            n
            for n in dict.fromkeys([*self.changed, *changes])
            if origin is None or vals[n] != origin[n]
        )
        label = ",".join(f"{n}={_show(vals[n])}" for n in changed)
        return Profile(
            name=f"{base}[{label}]" if changed else base,
            kernel=self.kernel,
            description=self.description,
            values=vals,
            changed=changed,
        )

    def to_json(self) -> dict[str, Any]:
        """``{"name", "kernel", "description", "changed", "switches": {name: value}}``."""
        return {
            "name": self.name,
            "kernel": self.kernel,
            "description": self.description,
            "changed": list(self.changed),
            "switches": dict(self.values),
        }


def _unknown_switch(name: str) -> str:
    return f"unknown switch {name!r}; valid switches: {', '.join(SWITCHES)}"


_GTOD: dict[str, SwitchValue] = {
    "pvclock_gtod_chain": True,
    "clocksource_change_chain": False,
    "kvm_host_clock": "pvclock_gtod_copy",
    "stable_pvclock_host": False,
    "kvmclock_base": "boot",
    "masterclock_sync": "spinlock",
    "guest_tsc_write_syncs": True,
    "user_set_tsc": False,
    "masterclock_request": "on_update",
    "kvm_clock_realtime": False,
    "vcpu_tsc_offset_attr": False,
    "vm_tsc_khz": False,
    "nested_tsc_scaling": False,
    "tiny_ratio_clamp": False,
    "wall_clock": "boottime",
    "pm_notifier": False,
    "trace_format": "hostclock_symbol",
    "kvmclock_rating": "always_400",
    "clocksource_watchdog": "4.13",
    "tsc_watchdog_exemption": False,
    "pvclock_trace_version": "odd",
    "tk_delta_overflow_safe": False,
}
_SERIES: dict[str, SwitchValue] = {
    **_GTOD,
    "pvclock_gtod_chain": False,
    "clocksource_change_chain": True,
    "kvm_host_clock": "timekeeper",
    "stable_pvclock_host": True,
    "trace_format": "hostclock_stable",
}
_UPSTREAM: dict[str, SwitchValue] = {
    **_GTOD,
    "kvmclock_base": "raw",
    "masterclock_sync": "seqcount",
    "guest_tsc_write_syncs": False,
    "user_set_tsc": True,
    "masterclock_request": "toggle_or_new_generation",
    "kvm_clock_realtime": True,
    "vcpu_tsc_offset_attr": True,
    "vm_tsc_khz": True,
    "nested_tsc_scaling": True,
    "tiny_ratio_clamp": True,
    "wall_clock": "single_tsc_read",
    "pm_notifier": True,
    "pvclock_trace_version": "final",
    "kvmclock_rating": "299_if_invariant_tsc",
    "clocksource_watchdog": "6.18",
    "tsc_watchdog_exemption": True,
    "tk_delta_overflow_safe": True,
}

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "gtod": Profile(
            "gtod",
            "4.13",
            "Linux 4.13 (2017): KVM's pvclock_gtod shadow copy, masterclock only on a TSC host",
            _GTOD,
        ),
        "series": Profile(
            "series",
            "4.13+series",
            "4.13 with the 2017 series: KVM asks the timekeeper, a stable kvm-clock host counts",
            _SERIES,
        ),
        "upstream": Profile(
            "upstream",
            "6.18",
            "Linux 6.18: raw-clock base, seqcount, userspace-only TSC sync, 5.16+ clock API",
            _UPSTREAM,
        ),
    }
)


def profiles_json(names: list[str] | None = None) -> dict[str, Any]:
    """The document of ``kvmclock profiles --json`` (schema ``kvmclock.profiles`` version 1,
    python/kvmclock/schemas/profiles.schema.json): ``{"schema", "schema_version", "switches":
    [...], "profiles": [...]}``, every switch (name, values, help, since, commit, where) and
    each named profile (:meth:`Profile.to_json`)."""
    chosen = list(PROFILES) if names is None else names
    return {
        "schema": "kvmclock.profiles",
        "schema_version": 1,
        "switches": [
            {
                "name": s.name,
                "values": list(s.values),
                "help": s.help,
                "since": s.since,
                "commit": s.commit,
                "where": s.where,
            }
            for s in SWITCHES.values()
        ],
        "profiles": [PROFILES[n].to_json() for n in chosen],
    }


def profiles_table(names: list[str] | None = None) -> str:
    """The switches as a text table: one row per switch with its value in each profile, then
    its help, the release and commit that introduced the newer behaviour, and where."""
    chosen = list(PROFILES) if names is None else names
    lines = []
    for n in chosen:
        p = PROFILES[n]
        lines.append(f"{p.name:<9} {p.description}")
    lines.append("")
    width = max(len(s) for s in SWITCHES)
    cols = [max(len(n), *(len(_show(PROFILES[n][s])) for s in SWITCHES)) for n in chosen]
    head = f"{'switch':<{width}}  " + "  ".join(
        f"{n:<{c}}" for n, c in zip(chosen, cols, strict=True)
    )
    lines.append(head.rstrip())
    lines.append("-" * len(head.rstrip()))
    for s in SWITCHES.values():
        row = f"{s.name:<{width}}  " + "  ".join(
            f"{_show(PROFILES[n][s.name]):<{c}}" for n, c in zip(chosen, cols, strict=True)
        )
        lines.append(row.rstrip())
        lines.append(f"{'':<{width}}    {s.help}")
        lines.append(
            f"{'':<{width}}    values: {', '.join(_show(v) for v in s.values)}; "
            f"newer behaviour since {s.since} ({s.commit}); {s.where}"
        )
    return "\n".join(lines)


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, SwitchValue]:
    """``["name=value", ...]`` (``--set``) as switch values; ValueError names the bad item,
    the unknown switch (with the valid ones) or the invalid value (with the valid values)."""
    out: dict[str, SwitchValue] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected SWITCH=VALUE")
        if name not in SWITCHES:
            raise ValueError(_unknown_switch(name))
        if name in out:
            raise ValueError(f"--set {name} given twice; give each switch once")
        out[name] = SWITCHES[name].parse(text)
    return out


def resolve_profile(profile: str | Profile, **changes: SwitchValue) -> Profile:
    """A :class:`Profile` from a built-in name (or a Profile), with ``changes`` applied.

    Raises ValueError naming the valid profiles for an unknown name.
    """
    if isinstance(profile, Profile):
        base = profile
    else:
        try:
            base = PROFILES[profile]
        except (KeyError, TypeError):
            raise ValueError(
                f"profile={profile!r} invalid; choose one of {', '.join(PROFILES)}"
            ) from None
    return base.with_(**changes) if changes else base
