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


HYDRA_CASES = [["-m", "--cfg", "job"], ["--resolve"], ["--info", "nosuch"], ["--cfg", "job", "-p", "x"],
               ["-m", "seed=0,1", "hydra.launcher.n_jobs=0"], ["-m", "seed=0,1", "hydra.sweep.subdir=x"],
               ["-m", "seed=interval(0,1)"], ["-m", "seed=0,1", "hydra.sweeper.max_batch_size=-1"],
               ["-m", "seed=1,1", "hydra.sweep.subdir=s${seed}"], ["--config-dir", "/nonexistent"],
               ["--cfg", "job", "--package", "secondary"], ["-m", "secondary=glob(k*)", "seed=0"]]  # fmt: skip


def _case(rng: random.Random) -> list[str]:
    roll = rng.random()
    if roll < 0.2:  # a config group: an option, or something a group does not take
        group = rng.choice(list(GROUPS))
        value = rng.choice(GROUPS[group]) if rng.random() < 0.5 else rng.choice(BAD)
        return [f"{group}={value}"]
    if 0.22 <= roll < 0.25:  # Hydra's flags and own keys, alone or in combinations Hydra refuses
        return rng.choice(HYDRA_CASES)
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


# -- The other commands: report, trace, experiment, costs, plugins, bench --
#
# Seeded odd inputs for every other console script, called in-process (their ``main``), over a workspace
# of good and bad files and of output paths that are full (a small tmpfs), read-only, or not regular files
# (a fifo, a directory, a device node like /dev/null made in the workspace); the file-system cases need
# root to mount and are left out elsewhere, with the reason printed. Every case must exit 0, or exit 1 or
# 2 with one line on stderr; none may raise (a traceback), hang, or leave a temporary file. The sweeps an
# experiment would start and bench's measured runs are replaced by stubs: this is about the inputs, not
# the runs (tests/test_experiment_lock.py runs an experiment for real).

COMMAND_CASES = {"report": 60, "trace": 60, "experiment": 24, "costs": 30, "plugins": 8, "bench": 20}
ODD = ["", " ", "-", "--", "ü", "nosuch", "a,b", ",", "=", "x=", "1e308", "-1", "0", "nan", "'", "[", "{a: 1}",
       "${nosuch:x}", "\udcff", "a" * 300]  # fmt: skip


def _fake_run(root, i: int, mode: str, seed: int, column: bool = False) -> None:
    from conftest import config
    from mmnsim import output

    d = root / str(i)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (d / ".hydra" / "overrides.yaml").write_text(f"- secondary.mode={mode}\n- seed={seed}\n")
    rows = [{"tick": t, "sim_time_ns": 1e6 * t, "accesses": 100 * t, **({"kvm.zaps": t} if column else {})}
            for t in range(4)]  # fmt: skip
    metrics = {"accesses": 1000 + seed, "major_faults": 10, "oom_victims": "guest0", "invariant_violations": 0}
    output.write_results(d, config(f"secondary.mode={mode}", f"seed={seed}"), {**metrics, "seed": seed}, rows)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Good and bad inputs, and output paths of every kind, in one folder; mounts unmounted after."""
    import os
    import stat
    import subprocess

    root = tmp_path_factory.mktemp("fuzzspace")
    sweep = root / "sweep"
    for i, (mode, seed) in enumerate([("pin", 0), ("pin", 1), ("notifier", 0), ("notifier", 1)]):
        _fake_run(sweep, i, mode, seed, column=mode == "notifier")
    (sweep / "9" / ".hydra").mkdir(parents=True)
    (sweep / "9" / ".hydra" / "config.yaml").write_text("seed: 9\n")  # a job that never finished
    bad = root / "bad"
    _fake_run(bad, 0, "pin", 0)
    (bad / "0" / "summary.parquet").write_bytes(b"PAR1 garbage")
    _fake_run(bad, 1, "notifier", 0)
    (bad / "1" / ".hydra" / "overrides.yaml").write_text("a: [\n")  # a readable run whose overrides are not
    named = root / "résultats-ü"
    _fake_run(named, 0, "notifier", 3)
    (root / "empty").mkdir()
    (root / "afile").write_text("x")
    traces = {
        "ok.csv": "page,write\n" + "".join(f"{i % 40},{i % 2}\n" for i in range(500)),
        "empty.csv": "", "header.csv": "page,write\n", "huge.csv": "page\n18446744073709551616\n",
        "neg.csv": "page\n-5\n", "long.csv": "page\n" + "9" * 200_000 + "\n", "text.csv": "name\nabc\n",
        "ok.lackey": "".join(f" L {4096 * (i % 30):x},8\n S {4096 * i:x},4\n" for i in range(200)),
        "wide.lackey": " L 1234567890abcdef01,8\n", "garbage.mmt": "not a trace at all",
        "short.valpin": "1234567",
    }  # fmt: skip
    for name, content in traces.items():
        (root / name).write_text(content)
    (root / "latin1.csv").write_bytes(b"page\n\xe9\xff\n")
    (root / "ok.mmt.gz").write_bytes(b"\x1f\x8b broken gzip")
    os.mkfifo(root / "fifo")
    (root / "dir.mmt").mkdir()
    specials = ["fifo", "dir.mmt", "empty"]
    try:
        os.mknod(root / "null-like", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # like /dev/null; never the real one
        specials.append("null-like")
    except PermissionError:
        pass
    mounts, skipped = [], []
    for name, options in (("full", "size=128k"), ("ro", "ro,size=64k")):
        where = root / name
        where.mkdir()
        if os.geteuid() != 0:
            skipped.append(f"{name}: mounting a tmpfs needs root")
            continue
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            skipped.append(f"{name}: {done.stderr.decode().strip()}")
            continue
        mounts.append(where)
        specials.append(name)
    if (root / "full") in mounts:
        fd = os.open(root / "full" / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
    yield {"root": root, "specials": specials, "skipped": skipped, "traces": [*traces, "latin1.csv", "ok.mmt.gz"]}
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _report_case(rng: random.Random, ws: dict) -> list[str]:
    root = ws["root"]
    dirs = rng.choice([["sweep"], ["sweep", "sweep"], ["sweep", "sweep/0"], ["bad"], ["bad", "sweep"], ["empty"],
                       ["afile"], ["nosuch"], ["résultats-ü"], [], ["sweep", "résultats-ü"], ["fifo"]])  # fmt: skip
    args = [str(root / d) for d in dirs]
    columns = ["seed", "secondary.mode", "accesses", "major_faults", "oom_victims", "nosuch", "kvm.zaps", *ODD[:6]]
    for _ in range(rng.randint(0, 3)):
        option = rng.choice(["--by", "--metrics", "--baseline", "--plot", "--timeseries", "--hue", "--out", "--explain",
                             "--metrics-doc", "--nosuch"])  # fmt: skip
        if option == "--plot":
            args += [option, rng.choice(columns), rng.choice(columns)]
        elif option == "--out":
            args += [option, str(root / rng.choice([*ws["specials"], "afile", "newout", "full/sub"]))]
        elif option == "--baseline":
            args += [option, rng.choice(["secondary.mode=pin", "secondary.mode=x", "seed", "=", "nosuch=1"])]
        elif option == "--timeseries":
            args += [option, rng.choice(["accesses", "kvm.zaps", "accesses/tick", "a/b/c", "nosuch", "oom_victims"])]
        elif option in ("--metrics-doc", "--nosuch"):
            args.append(option)
        else:
            args += [option, rng.choice([*columns, "seed,secondary.mode", "accesses,oom_victims", "all"])]
    return args


def _trace_case(rng: random.Random, ws: dict) -> list[str]:
    root = ws["root"]
    src = str(root / rng.choice([*ws["traces"], "nosuch.csv", "dir.mmt", "afile"]))
    command = rng.choice(["info", "convert", "convert", "convert", "record", "nosuch"])
    if command == "info":
        return ["info", src, *(["--format", rng.choice(["csv", "mmt", "lackey", "x"])] if rng.random() < 0.3 else [])]
    if command == "record":
        return ["record", *rng.choice([["-o", str(root / "rec.mmt")], [], ["-o"], ["-o", str(root / "fifo"), "--"]])]
    if command == "nosuch":
        return [rng.choice(ODD)]
    place = rng.choice([*ws["specials"], ".", "nosuchdir"])
    name = rng.choice(["out.mmt", "out.valpin.gz", "out.csv.zst", "out.oracle", "out.txt", "out.mmt.gz", ""])
    dst = root / place / name if place not in ("fifo", "null-like") else root / place
    args = ["convert", src, str(dst)]
    for flag, values in (("--from", ["auto", "csv", "lackey", "mmt", "x"]), ("--to", ["auto", "mmt", "csv", "lackey"])):
        if rng.random() < 0.3:
            args += [flag, rng.choice(values)]
    return args + rng.sample(["--dense", "--collapse", "--keep-instructions"], rng.randint(0, 2))


def _experiment_case(rng: random.Random, ws: dict) -> list[str]:
    root = ws["root"]
    args = [rng.choice(["swap", "numa", "release_cost", "nosuch", "all", *ODD[:3]])]
    if rng.random() < 0.3 or args[0] == "all":  # all: the checks of seven sweeps take a minute on a busy machine
        args.append("--report-only")
    if rng.random() < 0.3:
        args.append("--sensitivity")
    if rng.random() < 0.4:
        args += ["--out", str(root / rng.choice([*ws["specials"], "afile", "expout"]))]
    for _ in range(rng.randint(0, 2)):
        args.append(rng.choice(["seed=0", "kernel=2008", "guest.memory_mib=${host.memory_mib}",
                                "hydra.launcher.n_jobs=0", "hydra.sweep.subdir=x", "host.memroy_mib=3",
                                "policies=a,b", "--nosuch", *ODD[:4]]))  # fmt: skip
    return args


def _costs_case(rng: random.Random, ws: dict) -> list[str]:
    flags = rng.sample(["--json", "--doc", "--nosuch"], rng.randint(0, 1))
    return [*flags, *_case(rng), *(["kernel=2008"] if rng.random() < 0.2 else [])]


def _plugins_case(rng: random.Random, ws: dict) -> list[str]:
    return rng.sample(["--help", "--nosuch", "extra", *ODD[:3]], rng.randint(0, 1))


def _bench_case(rng: random.Random, ws: dict) -> list[str]:
    args = []
    for flag in ("--repeat", "--accesses", "--guest-mib", "--host-mib", "--seed", "--case"):
        if rng.random() < 0.25:
            values = (
                ["core", "trace", "devices", "numa", "defrag", "x"] if flag == "--case" else ["0", "1", "-3", "abc"]
            )
            args += [flag, rng.choice(values)]
    if rng.random() < 0.5:
        args += [rng.choice(["seed=1", "nosuch.key=1", "kernel=2008", "guest.memory_mib=0", "policies=[swap,numa]",
                             "hydra.run.dir=x"])]  # fmt: skip
    return args


def _commands():
    from mmnsim import bench, discovery, experiment, report, sources, tracecli

    return {
        "report": (report.main, _report_case),
        "trace": (tracecli.main, _trace_case),
        "experiment": (experiment.main, _experiment_case),
        "costs": (sources.main, _costs_case),
        "plugins": (discovery.main, _plugins_case),
        "bench": (bench.main, _bench_case),
    }


def test_fuzzed_inputs_to_every_other_command_are_one_line_or_accepted(workspace, capsys, monkeypatch):
    import os

    from mmnsim import bench, sweeplock

    ws = workspace
    monkeypatch.chdir(ws["root"])
    monkeypatch.setattr(sweeplock.SweepLock, "run_sweep", lambda self, command, env=None: 0)  # no sweep runs
    monkeypatch.setattr(bench, "_runs", lambda args, extra: [{"accesses_per_second": 1.0, "accesses": 1,
                        "wall_seconds": 1.0, "major_faults": 0, "peak_rss_mib": 1.0, "bytes_per_guest_page": 1.0,
                        "baseline_rss_mib": 1.0, "invariant_violations": 0}] * args.repeat)  # fmt: skip
    monkeypatch.setattr(bench, "trace_case", lambda repeat, as_json: None)
    rng = random.Random(SEED)
    counts = {"cases": 0, "exit 0": 0, "exit 1": 0, "exit 2": 0, "tracebacks": 0, "not one line": 0, "hangs": 0}
    bad = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    try:
        for name, (main, make) in _commands().items():
            for _ in range(COMMAND_CASES[name]):
                argv = make(rng, ws)
                counts["cases"] += 1
                signal.alarm(60)
                try:
                    main(argv)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                except Hang:
                    counts["hangs"] += 1
                    bad.append((name, argv, "hang"))
                    continue
                except BaseException as exc:  # noqa: BLE001 - what the test is looking for
                    counts["tracebacks"] += 1
                    bad.append((name, argv, f"{type(exc).__name__}: {exc}"))
                    continue
                finally:
                    signal.alarm(0)
                    printed = capsys.readouterr()
                err = [line for line in printed.err.splitlines() if line.strip()]
                counts[f"exit {code}" if code in (0, 1, 2) else "tracebacks"] += 1
                if "Traceback" in printed.err + printed.out:
                    counts["tracebacks"] += 1
                    bad.append((name, argv, printed.err[-500:]))
                elif code != 0 and (len(err) != 1 or not err[0].startswith("mmnsim-")):
                    counts["not one line"] += 1
                    bad.append((name, argv, f"exit {code}: {err}"))
    finally:
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    leftover = [str(p) for p in ws["root"].rglob("*.tmp")]
    with capsys.disabled():
        print(f"\nfuzz of the other commands (seed {SEED}): " + ", ".join(f"{k} {v}" for k, v in counts.items())
              + f"; {elapsed:.1f} s" + (f"; file-system cases left out: {'; '.join(ws['skipped'])}" if ws["skipped"]
              else ""))  # fmt: skip
    assert not bad, bad[:5]
    assert not leftover, leftover
    assert counts["exit 0"] > 20 and counts["exit 2"] > 50  # both kinds are tried
    assert os.path.exists(ws["root"] / "full" / "filler") or ws["skipped"]
