"""A seeded fuzz test of the command line: random overrides over every documented key (README's key
table) and config group, mixing valid and invalid values. Each case runs in-process through
``check_overrides`` (the up-front check ``mmnsim`` runs before Hydra starts a job); a handful run through
the real ``mmnsim`` command. Every case must end accepted, or rejected with a ConfigError of one line
(exit status 2 from the command); none may raise anything else (a traceback) or hang.
"""

import random
import signal
import time

import pytest

from conftest import cli
from mmnsim.cli import check_overrides
from mmnsim.config import ConfigError

SEED = 20261128
CASES = 200  # in-process (each a Hydra composition: ~0.1 s on an idle machine)
SUBPROCESS_CASES = 4
TINY = ["guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=50000",
        "engine.accesses_per_tick=16384"]  # fmt: skip

# Documented keys, each with a few valid values and, for component keys, what selects the component.
KEYS = {
    "seed": ["0", "7", "123456789"],
    "host.memory_mib": ["24", "512", "1024"],
    "host.swap_mib": ["0", "64", "2048"],
    "host.numa_nodes": ["1", "2"],
    "host.distance": ["null", "[[10]]", "[[10,20],[20,10]]"],
    "host.watermark_scale_factor": ["10", "100", "3000"],
    "host.min_free_kbytes": ["0", "1024", "65536"],
    "host.thp": ["always", "never"],
    "host.swap_write_error_rate": ["0", "0.01"],
    "host.swap_read_error_rate": ["0", "0.5", "1"],
    "host.oom": ["kill", "fail"],
    "guest.memory_mib": ["32", "1536"],
    "guest.vcpus": ["1", "4", "64"],
    "guest.count": ["1", "2"],
    "guest.vcpu_nodes": ["null", "[0]", "[0,0]"],
    "guest.oom_score_adj": ["-1000", "0", "1000"],
    "guest.devices": [
        "[]",
        "[{secondary: {name: rdma}, workload: {name: zipf}, node: 0}]",
        "[{secondary: {name: none}, workload: {name: uniform}, accesses_per_tick: 100}]",
    ],
    "secondary.mode": ["pin", "notifier"],
    "secondary.fault_ns": ["0", "1500.5"],
    "secondary.region_start_mib": ["0", "4"],
    "secondary.region_mib": ["null", "8"],
    "secondary.device_memory_mib": ["0", "16"],
    "secondary.migrate_hot_pages": ["0", "128"],
    "secondary.fault": ["none", "ignore_invalidate", "young_all"],
    "workload.accesses": ["0", "50000", "20000000"],
    "workload.write_fraction": ["0", "0.3", "1"],
    "workload.boot": ["true", "false"],
    "workload.boot_writes": ["true", "false"],
    "workload.exponent": ["0.5", "1.2"],
    "workload.hot_fraction": ["0.1", "0.5"],
    "workload.hot_probability": ["0.9"],
    "workload.shift_every": ["0", "100000"],
    "policies.swap.mode": ["lru", "clock"],
    "policies.defrag.pages_to_scan": ["4096", "1"],
    "policies.defrag.max_ptes_none": ["0", "511"],
    "policies.numa.scan_size_mb": ["256", "16"],
    "policies.numa.skip_pinned": ["true", "false"],
    "policies.schedule.events": ["[]", "[{at_tick: 5, tenant: guest0, vcpu_nodes: [0]}]"],
    "processes": ["[]", "[{name: hog, memory_mib: 8, node: 0, workload: {name: uniform, accesses: 1000}}]"],
    "engine.accesses_per_tick": ["1", "16384", "1048576"],
    "engine.check_invariants": ["true", "false"],
    "engine.check_accesses": ["true", "false"],
    "engine.stop_on_violation": ["true", "false"],
    "engine.timeseries": ["true", "false"],
    "engine.max_memory_gib": ["null", "4", "0.5"],
    "costs.access_ns": ["80", "1.5"],
    "costs.swap_in_ns": ["1700"],
}
NEEDS = {  # the group choice under which a key exists
    "secondary.region_start_mib": ["secondary=rdma"], "secondary.region_mib": ["secondary=gpu"],
    "secondary.device_memory_mib": ["secondary=gpu"], "secondary.migrate_hot_pages": ["secondary=gpu"],
    "secondary.fault": ["secondary=faulty"], "workload.exponent": ["workload=zipf"],
    "workload.hot_fraction": ["workload=hotcold"], "workload.hot_probability": ["workload=hotcold"],
    "workload.shift_every": ["workload=hotcold"], "policies.defrag.pages_to_scan": ["policies=[swap,defrag]"],
    "policies.defrag.max_ptes_none": ["policies=[swap,defrag]"], "policies.numa.scan_size_mb": ["policies=[numa]"],
    "policies.numa.skip_pinned": ["policies=[numa]"], "policies.schedule.events": ["policies=[schedule]"],
}  # fmt: skip
GROUPS = {
    "secondary": ["kvm", "rdma", "gpu", "none", "faulty", "faulty_odp"],
    "workload": ["zipf", "uniform", "sequential", "hotcold"],
    "policies": ["[swap]", "[swap,numa]", "[eager_release]", "[]", "[swap,defrag,fragment]"],
    "+scenario": ["numa_moved_vcpus", "numa_wrong_node", "numa_large_guest", "defrag_fragmented"],
}
# Values that are wrong for most keys: types, ranges, sizes, syntax, interpolations, structure.
BAD = ["-1", "0", "abc", "''", "5.7", "1e308", "nan", "inf", "-inf", "true", "null", "[]", "[1,2]", "{a: 1}",
       "9223372036854775808", "18446744073709551616", "-9223372036854775809", "1000000000", "8451285",
       "${nosuch:x}", "${seed}", "${host.nosuch}", "[[10,20],[20]]", "[{name: p}]", "ü", "'a b'", "[", "{",
       "1,2", "a=b", "2147483648", "4096.0"]  # fmt: skip


def _case(rng: random.Random) -> list[str]:
    roll = rng.random()
    if roll < 0.2:  # a config group: an option, or something a group does not take
        group = rng.choice(list(GROUPS))
        value = rng.choice(GROUPS[group]) if rng.random() < 0.5 else rng.choice(BAD)
        return [f"{group}={value}"]
    if roll < 0.25:  # a key nobody documents, or too long for a file name
        return [rng.choice(["engine.nosuch=1", "+colour=blue", "host.memroy_mib=3", "x" * 300 + "=1",
                            "guest." + "y" * 260 + "=2", "~secondary", "scenario=numa_wrong_node"])]  # fmt: skip
    key = rng.choice(list(KEYS))
    value = rng.choice(KEYS[key]) if rng.random() < 0.45 else rng.choice(BAD)
    case = [*NEEDS.get(key, []), f"{key}={value}"]
    if rng.random() < 0.3:  # a second key, so that combinations are tried too
        other = rng.choice(list(KEYS))
        case += [*NEEDS.get(other, []), f"{other}={rng.choice(KEYS[other] + BAD[:8])}"]
    return case


def cases() -> list[list[str]]:
    rng = random.Random(SEED)
    return [_case(rng) for _ in range(CASES)]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def test_fuzzed_overrides_are_accepted_or_one_line_errors(capsys):
    counts = {"cases": 0, "accepted": 0, "rejected cleanly": 0, "tracebacks": 0, "hangs": 0}
    bad = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    try:
        for case in cases():
            counts["cases"] += 1
            signal.alarm(20)
            try:
                check_overrides(case)
                counts["accepted"] += 1
            except ConfigError as exc:
                message = str(exc)
                if message and "\n" not in message:
                    counts["rejected cleanly"] += 1
                else:
                    bad.append((case, f"not one line: {message!r}"))
            except Hang:
                counts["hangs"] += 1
                bad.append((case, "hang"))
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                counts["tracebacks"] += 1
                bad.append((case, f"{type(exc).__name__}: {exc}"))
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nfuzz (seed {SEED}): " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; {elapsed:.1f} s")
    assert not bad, bad[:5]
    assert counts["accepted"] > CASES // 10 and counts["rejected cleanly"] > CASES // 3  # both kinds are tried


def test_fuzzed_rejections_through_the_real_command_exit_2_with_one_line(tmp_path):
    """A few of the rejected cases through ``mmnsim`` itself: exit 2, one line on stderr, nothing written."""
    picked = []
    for case in random.Random(SEED).sample(cases(), CASES):  # the first few the check rejects
        try:
            check_overrides([*TINY, *case])
        except ConfigError:
            picked.append(case)
        if len(picked) == SUBPROCESS_CASES:
            break
    for case in picked:
        out = cli(*TINY, *case, cwd=tmp_path)
        assert out.returncode == 2, (case, out.stderr)
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("mmnsim: "), (case, out.stderr)
        assert list(tmp_path.iterdir()) == [], case


@pytest.mark.parametrize(
    "override",
    ["policies=1.", "secondary=5", "+scenario=1.5", "secondary={a: 1}", "+scenario=[{name: p}]", "seed=${nosuch:x}",
     "guest.vcpus=9223372036854775808", "x" * 300 + "=1", "processes=5.7", "guest.memory_mib=1000000000",
     "workload.boot=8451285", "host.distance=[[10,20],[20]]", "host.min_free_kbytes=100000000"],
)  # fmt: skip
def test_the_issues_cases_are_config_errors(override):
    extra = ["host.numa_nodes=2"] if override.startswith("host.distance") else []
    with pytest.raises(ConfigError) as info:
        check_overrides([*extra, override])
    assert "\n" not in str(info.value)
