"""Every command, every input, one line; one grammar across commands (issue 29, items 1, 3 and 4).

Hydra's flag combinations and own keys that Hydra would refuse with a traceback, a sweep whose jobs would
share a directory, ``mmnsim-bench``'s and ``mmnsim-costs``' inputs: each is one line and exit status 2
before anything runs. ``mmnsim-costs`` and ``mmnsim-experiment`` take what ``mmnsim`` takes (``kernel=2008``),
and interpolations resolve where Hydra resolves them.
"""

import pytest

from conftest import cli, config
from mmnsim.bench import main as bench_main
from mmnsim.cli import check_overrides
from mmnsim.config import ConfigError
from mmnsim.discovery import Registry, plugin_manager
from mmnsim.settings import load_settings
from mmnsim.sources import main as costs_main

TINY = ["guest.memory_mib=16", "host.memory_mib=12", "workload.accesses=50000"]


def refused(*argv: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check_overrides(list(argv))
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "--cfg", "job"], "--multirun and --cfg: give one of"),
        (["--run", "-m"], "--run and --multirun: give one of"),
        (["--info", "config", "-m"], "--multirun and --info"),
        (["--resolve"], "--resolve works with --cfg"),
        (["--shell-completion"], "--shell-completion needs install=SHELL"),
        (["--experimental-rerun", "x.pickle"], "--experimental-rerun: mmnsim keeps no pickled job config"),
        (["--config-name", "nosuch"], "--config-path/--config-name: mmnsim runs its own config"),
        (["--config-dir", "/nonexistent"], "--config-dir /nonexistent: not a directory"),
        (["--hydra-help", "seed=1"], "--hydra-help prints Hydra's own help; it takes no overrides"),
        (["--info", "nosuch"], "argument --info/-i: invalid choice: 'nosuch'"),
        (["--nosuchflag"], "unrecognized arguments: --nosuchflag"),
        (["--cfg", "job", "--package", "nosuch"], "--package nosuch: no such node"),
        (["-m", "seed=0,1", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: the number of jobs run at once"),
        (["-m", "seed=0,1", "hydra.sweeper.max_batch_size=0"], "hydra.sweeper.max_batch_size=0"),
        (["-m", "seed=interval(0,2)"], "seed=interval(0,2): the basic sweeper runs a list of values"),
        (["-m", "seed=glob(*)"], "seed=glob(*): the sweep has no values"),
        (["-m", "seed=range(0,0)"], "seed=range(0,0): the sweep has no values"),
    ],
)
def test_hydra_flags_and_keys_hydra_refuses_with_a_traceback_are_one_line(argv, message):
    assert message in refused(*argv)


def test_what_hydra_accepts_still_passes():
    for argv in (["--cfg", "job", "--package", "secondary"], ["--cfg", "hydra", "--package", "hydra.launcher"],
                 ["-m", "secondary=glob(r*)", "seed=range(0,2)"], ["-m", "seed=0,1", "hydra.launcher.n_jobs=-1"],
                 ["--help"], ["--info", "searchpath"], ["-sc", "install=bash"]):  # fmt: skip
        check_overrides(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "seed=0,1", "hydra.sweep.subdir=same"],
        ["-m", "seed=1,1", "hydra.sweep.subdir=seed${seed}"],  # a value given twice
        ["-m", "seed=0,1", "secondary.mode=pin,notifier", "hydra.sweep.subdir=${secondary.mode}"],
        [
            "-m",
            "seed=0,1",
            "hydra.sweep.subdir=${hydra.job.override_dirname}",
            "hydra.job.config.override_dirname.exclude_keys=[seed]",
        ],  # fmt: skip
        ["-m", "+experiment=swap", "hydra.sweep.subdir=${guest.memory_mib}"],  # the experiment's own sweep
    ],
)
def test_a_sweep_whose_jobs_would_share_a_directory_is_refused_before_any_job(argv):
    message = refused(*argv)
    assert "hydra.sweep.subdir=" in message and "would both write" in message and "jobs 0 (" in message


def test_a_sweep_whose_pattern_tells_its_jobs_apart_runs():
    check_overrides(["-m", "seed=0,1", "secondary.mode=pin,notifier", "hydra.sweep.subdir=${secondary.mode}-${seed}"])
    check_overrides(["-m", "seed=0,1", "hydra.sweep.subdir=${hydra.job.override_dirname}"])


def test_a_colliding_sweep_through_the_command_exits_2_and_writes_nothing(tmp_path):
    out = cli("-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=x", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mmnsim: hydra.sweep.subdir=x: jobs 0 (")
    assert not (tmp_path / "sweep").exists()


def test_an_interpolation_resolves_where_hydra_resolves_it(capsys):
    cfg = config("guest.memory_mib=${host.memory_mib}", "host.memory_mib=512")
    settings = load_settings(cfg, Registry.from_plugins(plugin_manager()))
    assert settings.tenants[0].pages == 512 * 256
    check_overrides(["guest.memory_mib=${host.memory_mib}", "secondary.fault_ns=${costs.access_ns}"])
    assert "Recursive interpolation" in refused("guest.memory_mib=${guest.memory_mib}")
    costs_main(["guest.memory_mib=${host.memory_mib}"])
    assert "| `secondary.fault_ns` |" in capsys.readouterr().out


def test_costs_and_experiment_take_what_mmnsim_takes(capsys):
    costs_main(["kernel=2008"])
    assert "| cost | value | range | source |" in capsys.readouterr().out
    check_overrides(["-m", "+experiment=swap", "kernel=2008", "seed=0"])  # what mmnsim-experiment checks
    check_overrides(["kernel=2008,6.x", "-m"])


def _exit(main, capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return exited.value.code, err


def test_bench_inputs_are_checked_before_any_measured_run(capsys):
    code, err = _exit(bench_main, capsys, "--repeat", "0")
    assert code == 2 and err.startswith("mmnsim-bench: argument --repeat: 0 is below 1")
    code, err = _exit(bench_main, capsys, "nosuch.key=1")
    assert code == 2 and err.startswith("mmnsim-bench: nosuch: unknown key"), err
    code, err = _exit(bench_main, capsys, "--guest-mib", "abc")
    assert code == 2 and "'abc' is not an integer" in err
    code, err = _exit(bench_main, capsys, "--case", "trace", "seed=1")
    assert code == 2 and "--case trace replays the shipped trace as it is" in err
    code, err = _exit(bench_main, capsys, "--case", "devices", "guest.memory_mib=0")
    assert code == 2 and err.startswith("mmnsim-bench: guest.memory_mib"), err


def test_costs_and_plugins_options_are_one_line(capsys):
    code, err = _exit(costs_main, capsys, "--nosuch")
    assert code == 2 and err.startswith("mmnsim-costs: unrecognized arguments: --nosuch")
    code, err = _exit(costs_main, capsys, "hydra.run.dir=x")
    assert code == 2 and "not hydra.* ones" in err
    from mmnsim.discovery import main as plugins_main

    code, err = _exit(plugins_main, capsys, "extra")
    assert code == 2 and err.startswith("mmnsim-plugins: unrecognized arguments: extra")
