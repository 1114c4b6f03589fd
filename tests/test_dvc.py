"""DVC: data.dvc, the committed in-repo remote, the train stage, and a clean clone's `dvc pull`."""

from __future__ import annotations

import configparser
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mlpipe.common.errors import DataCorruptedError
from mlpipe.common.provenance import dvc_dir_hash, recorded_dir_hash
from mlpipe.data import load_split


def _remote_dir(root: Path) -> Path:
    config = configparser.ConfigParser()
    config.read(root / ".dvc" / "config")
    default = config["core"]["remote"]
    url = config[f"'remote \"{default}\"'"]["url"]
    assert "://" not in url and not Path(url).is_absolute(), (
        f"default remote must be a relative local path, got {url}"
    )
    return (root / ".dvc" / url).resolve()


def test_data_dvc_records_the_data_folder(repo_root: Path, dvc_data: Path) -> None:
    outs = yaml.safe_load((repo_root / "data.dvc").read_text())["outs"]
    assert len(outs) == 1 and outs[0]["path"] == "data" and outs[0]["hash"] == "md5"
    expected = recorded_dir_hash(repo_root / "data.dvc")
    actual, files = dvc_dir_hash(dvc_data)
    assert actual == expected, "mlpipe's folder hash must equal the one DVC wrote"
    assert outs[0]["nfiles"] == len(files) and "digits.csv.gz" in files


def test_repo_config_is_offline_and_remote_is_complete(repo_root: Path) -> None:
    config = configparser.ConfigParser()
    config.read(repo_root / ".dvc" / "config")
    assert config["core"]["analytics"] == "false"
    remote = _remote_dir(repo_root)
    assert remote.parent == repo_root, "the default remote lives inside the repository"
    dir_md5 = recorded_dir_hash(repo_root / "data.dvc")
    manifest = remote / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    objects = [manifest] + [
        remote / "files" / "md5" / e["md5"][:2] / e["md5"][2:]
        for e in json.loads(manifest.read_text())
    ]
    listed = subprocess.run(
        ["git", "ls-files", str(remote.relative_to(repo_root))],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    tracked = {repo_root / line for line in listed.stdout.split()}
    for obj in objects:
        assert obj.is_file(), f"{obj} missing from the in-repo remote: run `dvc push data.dvc`"
        assert obj in tracked, f"{obj} is not committed to git: `git add {remote.name}`"


def test_dvc_agrees_data_is_up_to_date(repo_root: Path, dvc_data: Path, dvc_cli) -> None:
    assert "up to date" in dvc_cli("status", "data.dvc", cwd=repo_root).stdout


def _get(node: dict, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


def _stages(root: Path, dvc_yaml: str = "dvc.yaml") -> dict:
    return yaml.safe_load((root / dvc_yaml).read_text())["stages"]


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _git_tracked(root: Path, *paths: str) -> set[str]:
    out = subprocess.run(
        ["git", "ls-files", *paths], cwd=root, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_train_stage_names_real_files_and_keys(repo_root: Path) -> None:
    stages = _stages(repo_root)
    stage = stages["train"]
    assert stage["cmd"].split()[:2] == ["mlpipe-train", "pipeline=true"]
    verified = _paths(stages["verify_data"]["outs"])
    assert set(verified) <= set(stage["deps"]), "train runs after the data check"
    for dep in stage["deps"]:
        assert dep in verified or (repo_root / dep).exists(), dep
    for entry in stage["params"]:
        for file, keys in entry.items():
            conf = OmegaConf.to_container(OmegaConf.load(repo_root / file))
            for key in keys:
                _get(conf, key)  # KeyError names a param that no longer exists
    outs, metrics, plots = (_paths(stage[k]) for k in ("outs", "metrics", "plots"))
    assert outs == ["artifacts/checkpoints/best.ckpt"]
    assert metrics == ["reports/train/metrics.json"] and plots == ["reports/train/curves.csv"]
    ignored = subprocess.run(
        ["git", "check-ignore", *outs, *metrics, *plots],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == outs, "binaries git-ignored; metrics and plots committed"


def test_metrics_and_plots_of_the_root_pipeline_are_committed(repo_root: Path) -> None:
    small = [
        p
        for stage in _stages(repo_root).values()
        for p in _paths(stage.get("metrics")) + _paths(stage.get("plots"))
    ]
    assert small and set(small) <= _git_tracked(repo_root, *small), (
        "commit the DVC metrics/plots files (`git add`), as example-get-started does"
    )
    plotted = [
        file
        for plot in yaml.safe_load((repo_root / "dvc.yaml").read_text())["plots"]
        for spec in plot.values()
        for file in spec["y"]
    ]
    assert set(plotted) <= _git_tracked(repo_root, *plotted), (
        "`dvc plots diff HEAD` loads a declared plot only from a committed file"
    )
    assert {"dvc.lock", "dvc.lock.cpu.json", "measurements/dvc.lock"} <= _git_tracked(
        repo_root, "dvc.lock", "dvc.lock.cpu.json", "measurements/dvc.lock"
    )


def test_measurement_stages_record_no_measured_bytes(repo_root: Path) -> None:
    """Timings vary run to run: a measurement stage that declared an output would rewrite the
    committed measurements/dvc.lock on every run."""
    stages = _stages(repo_root, "measurements/dvc.yaml")
    assert {"serve", "bench", "relu_bench", "profile_cpu", "report"} <= set(stages)
    for name, stage in stages.items():
        assert stage.get("wdir") == "..", name
        assert not any(stage.get(k) for k in ("outs", "metrics", "plots")), name
        for dep in stage["deps"]:
            assert not dep.startswith(("reports/bench", "reports/serve", "reports/relu")), (
                f"{name} depends on a measurement ({dep}): its lock entry would vary"
            )
    makefile = (repo_root / "Makefile").read_text()
    order = next(line for line in makefile.splitlines() if line.startswith("MEASURE :="))
    assert order.split(":=")[1].split() == list(stages), "make measure runs every stage, in order"
    for name, stage in _stages(repo_root).items():
        assert "timing" not in " ".join(_paths(stage.get("outs"))), name


def test_train_stage_outputs_match_the_config(repo_root: Path) -> None:
    stage = _stages(repo_root)["train"]
    with initialize_config_dir(
        version_base="1.3", config_dir=str(repo_root / "conf"), job_name="test"
    ):
        # the stage's command line (the tracked paths are the pipeline's), relative paths
        cfg = compose(config_name="train", overrides=stage["cmd"].split("#")[0].split()[1:])
    declared = {str(Path(p)) for k in ("outs", "metrics", "plots") for p in _paths(stage[k])}
    for key in ("best_checkpoint", "metrics", "curves"):
        assert str(Path(cfg.outputs[key])) in declared, key
    assert str(Path(cfg.outputs.timing)) not in declared, "timings vary: never a DVC output"


def test_export_provenance_hashes_only_export_deps(repo_root: Path) -> None:
    """The ONNX records a hash of these sources: each must be a dep of the export stage, or a
    change to it would change model.onnx without DVC knowing."""
    deps = set(_stages(repo_root)["export"]["deps"])
    prov = OmegaConf.load(repo_root / "conf" / "export" / "onnx.yaml").provenance
    assert set(prov.source_paths) <= deps
    assert set(prov.lock_files) <= deps and "dvc.lock" not in prov.lock_files


def test_every_train_param_file_accepts_dvc_set_param(repo_root: Path, tmp_path: Path) -> None:
    """`dvc exp run -S <file>:<key>=<value>` for every key the train stage tracks: DVC's own
    rewrite (dvc.utils.hydra.apply_overrides) on a copy, with a changed value read back."""
    from dvc.utils.hydra import apply_overrides

    for entry in _stages(repo_root)["train"]["params"]:
        for file, keys in entry.items():
            copy = tmp_path / file
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text((repo_root / file).read_text())
            assert "${" not in copy.read_text(), f"{file}: DVC would resolve ${{...}} and fail"
            for key in keys:
                value = _get(OmegaConf.to_container(OmegaConf.load(copy)), key)
                if isinstance(value, dict | list):
                    continue  # a node: its leaves are set the same way
                new = not value if isinstance(value, bool) else value
                apply_overrides(copy, [f"{key}={json.dumps(new)}"])
                assert _get(OmegaConf.to_container(OmegaConf.load(copy)), key) == new, key


@pytest.mark.slow
def test_dvc_exp_run_set_param_reaches_training(repo_root: Path, tmp_path: Path) -> None:
    """The real `dvc exp run -S` in a clone: the values land in the run (not silently ignored),
    and `dvc exp show` / `dvc metrics diff` see the committed and the new metrics."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True, timeout=120)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(clone),  # the clone's mlpipe and conf/
    }

    def dvc(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    dvc("pull", "-q", "data.dvc")
    dvc(
        "exp",
        "run",
        "train",
        "-n",
        "lr-probe",
        "-S",
        "conf/optimizer/adamw.yaml:lr=0.002",
        "-S",
        "conf/trainer/default.yaml:max_epochs=1",
        "-S",
        "conf/train.yaml:seed=7",
        "-S",
        "conf/data/digits.yaml:batch_size=256",
    )
    ckpt = torch.load(clone / "artifacts/checkpoints/best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["schedule"]["optimizer"]["lr"] == 0.002
    assert ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.002
    metrics = json.loads((clone / "reports/train/metrics.json").read_text())
    assert metrics["seed"] == 7 and metrics["epochs"] == 1
    data_cfg = OmegaConf.load(repo_root / "conf" / "data" / "digits.yaml")
    data_cfg.data_dir, data_cfg.dvc_file = str(clone / "data"), str(clone / "data.dvc")
    n_train = len(load_split(data_cfg, "train")[1])
    assert metrics["global_step"] == -(-n_train // 256), "data.batch_size=256 was not used"
    shown = json.loads(dvc("exp", "show", "--json"))
    assert "lr-probe" in json.dumps(shown) and "val_acc_best" in json.dumps(shown)
    diff = json.loads(dvc("metrics", "diff", "HEAD", "--json"))
    assert diff["reports/train/metrics.json"]["seed"]["old"] == 42


def test_plots_and_metrics_render(repo_root: Path, tmp_path: Path, dvc_cli) -> None:
    """`dvc plots show` renders the declared, committed training curves; `dvc metrics show` the
    committed metrics."""
    out = dvc_cli("plots", "show", "--json", "-o", str(tmp_path), cwd=repo_root).stdout
    shown = json.loads(out)["data"]
    assert shown["training loss per epoch"][0]["content"]["data"]["values"]
    names = " ".join(shown)
    assert "training loss per epoch" in names and "training accuracy per epoch" in names
    metrics = dvc_cli("metrics", "show", "--json", cwd=repo_root).stdout
    assert "val_acc_best" in metrics


def _declared_plots(root: Path) -> set[str]:
    """Names `dvc plots` gives every plot that a dvc.yaml of the checkout declares."""
    names = set()
    for dvc_yaml in ("dvc.yaml", "measurements/dvc.yaml"):
        spec = yaml.safe_load((root / dvc_yaml).read_text())
        names |= {name for plot in spec.get("plots") or [] for name in plot}
        names |= {p for stage in spec["stages"].values() for p in _paths(stage.get("plots"))}
    return names


def test_every_declared_plot_loads_at_head_in_a_clean_clone(
    repo_root: Path, tmp_path: Path
) -> None:
    """The real `dvc plots diff HEAD` in a fresh clone (no pipeline run, no data pulled): every
    plot a dvc.yaml declares loads from git, none "failed to load"."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True, timeout=120)
    proc = _dvc_in(clone, "plots", "diff", "HEAD", "--json", "-o", str(tmp_path / "html"))
    assert "failed to load" not in proc.stderr, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown.get("errors")
    declared = _declared_plots(clone)
    assert declared <= set(shown["data"]), declared - set(shown["data"])
    for name in declared:
        assert all(view["content"]["data"]["values"] for view in shown["data"][name]), name


@pytest.mark.slow
def test_clean_clone_pulls_data_offline(repo_root: Path, tmp_path: Path, dvc_cli) -> None:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(repo_root), str(clone)],
        check=True,
        timeout=120,
    )
    assert not (clone / "data").exists()
    dvc_cli("pull", cwd=clone)
    assert "up to date" in dvc_cli("status", "data.dvc", cwd=clone).stdout
    data_cfg = OmegaConf.load(repo_root / "conf" / "data" / "digits.yaml")
    data_cfg.data_dir, data_cfg.dvc_file = str(clone / "data"), str(clone / "data.dvc")
    images, labels = load_split(data_cfg, "test")
    assert len(images) == len(labels) > 0


def _clone_env(clone: Path) -> dict[str, str]:
    """The environment a user's shell in `clone` has: this venv's tools, the clone's package."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(clone),
    }


def _dvc_in(clone: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=clone,
        env=_clone_env(clone),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if ok:
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _pulled_clone(repo_root: Path, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True, timeout=120)
    _dvc_in(clone, "pull", "-q", "data.dvc")
    return clone


def _experiment_metrics(clone: Path, name: str) -> dict:
    """metrics.json of the experiment `name`, as DVC recorded it (from its exp ref)."""
    shown = json.loads(_dvc_in(clone, "exp", "show", "--json").stdout)
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    return rev["data"]["metrics"]["reports/train/metrics.json"]["data"]
    raise AssertionError(f"experiment {name} not in `dvc exp show`: {json.dumps(shown)[:2000]}")


def _wait_for_queue(clone: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = _dvc_in(clone, "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            return
        assert time.monotonic() < deadline, f"queue did not finish:\n{status}"
        time.sleep(2)


@pytest.mark.slow
def test_queued_and_temp_experiments_honour_set_params(repo_root: Path, tmp_path: Path) -> None:
    """`dvc exp run --queue` / `--temp` run in a copy of the tree (.dvc/tmp/exps/...): the run
    must read that copy's conf/, which holds the -S values, not the imported package's."""
    clone = _pulled_clone(repo_root, tmp_path)
    asks = {"queued": (1, 7), "temp": (2, 3)}  # name: (max_epochs, seed)
    for name, (epochs, seed) in asks.items():
        mode = "--queue" if name == "queued" else "--temp"
        _dvc_in(
            clone,
            "exp",
            "run",
            mode,
            "train",
            "-n",
            name,
            "-S",
            f"conf/trainer/default.yaml:max_epochs={epochs}",
            "-S",
            f"conf/train.yaml:seed={seed}",
        )
    _dvc_in(clone, "queue", "start", "-j", "1")
    _wait_for_queue(clone)
    for name, (epochs, seed) in asks.items():
        metrics = _experiment_metrics(clone, name)
        assert (metrics["epochs"], metrics["seed"]) == (epochs, seed), (name, metrics)
    _dvc_in(clone, "exp", "apply", "queued")
    applied = json.loads((clone / "reports/train/metrics.json").read_text())
    assert applied["epochs"] == 1 and applied["seed"] == 7


def test_a_command_outside_a_checkout_refuses_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mlpipe-train")],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MLPIPE_ROOT"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"mlpipe-train: error: no conf/ in {tmp_path.resolve()}: run it from the root of an "
        "mlpipe checkout, or set MLPIPE_ROOT=<checkout>"
    )


def _run_recovery(clone: Path, message: str) -> None:
    """Run the commands an error message gives (backticked), up to the one that restores data."""
    for command in re.findall(r"`([^`]+)`", message):
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=clone,
            env=_clone_env(clone),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{command}:\n{proc.stdout}\n{proc.stderr}"
        if "dvc checkout" in command or "dvc pull" in command:
            return
    raise AssertionError(f"no restoring command in: {message}")


def _append_a_row(path: Path) -> None:
    rows = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(gzip.compress((rows + rows.splitlines()[0] + "\n").encode(), mtime=0))


def _data_cfg(clone: Path, repo_root: Path):
    data_cfg = OmegaConf.load(repo_root / "conf" / "data" / "digits.yaml")
    data_cfg.data_dir, data_cfg.dvc_file = str(clone / "data"), str(clone / "data.dvc")
    return data_cfg


@pytest.mark.slow
def test_dvc_repro_refuses_changed_data_and_the_recovery_works(
    repo_root: Path, tmp_path: Path
) -> None:
    """`dvc repro` re-records changed data in data.dvc before any stage runs; the verify_data
    stage compares with the committed data.dvc and refuses in one line, naming a recovery that
    works, before DVC deletes train's outputs (it does so right before running a stage)."""
    clone = _pulled_clone(repo_root, tmp_path)
    # the last good outputs: a checkpoint (never in git; any bytes do) and the committed metrics
    kept = [clone / "artifacts/checkpoints/best.ckpt", clone / "reports/train/metrics.json"]
    kept[0].parent.mkdir(parents=True)
    kept[0].write_bytes(b"the last good checkpoint")
    before = {path: path.read_bytes() for path in kept}
    _append_a_row(clone / "data" / "digits.csv.gz")
    proc = _dvc_in(clone, "repro", "train", ok=False)
    assert proc.returncode != 0
    assert {path: path.read_bytes() for path in kept if path.is_file()} == before, (
        "a refused run must leave train's outputs as they were"
    )
    prefix = "mlpipe-verify-data: error:"
    errors = [line for line in proc.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and "re-records changed data" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _run_recovery(clone, errors[0])
    assert "up to date" in _dvc_in(clone, "status", "data.dvc").stdout
    assert len(load_split(_data_cfg(clone, repo_root), "test")[1]) > 0


@pytest.mark.slow
def test_a_corrupt_remote_object_is_refused_at_pull(repo_root: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True, timeout=120)
    dir_md5 = recorded_dir_hash(clone / "data.dvc")
    manifest = json.loads(
        (_remote_dir(clone) / "files/md5" / dir_md5[:2] / dir_md5[2:]).read_text()
    )
    md5 = next(e["md5"] for e in manifest if e["relpath"] == "digits.csv.gz")
    obj = _remote_dir(clone) / "files/md5" / md5[:2] / md5[2:]
    flipped = bytearray(obj.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    obj.write_bytes(bytes(flipped))
    assert _dvc_in(clone, "pull", "data.dvc", ok=False).returncode != 0
    assert not (clone / "data" / "digits.csv.gz").exists()
    subprocess.run(["git", "checkout", "--", "dvc-remote"], cwd=clone, check=True)
    _dvc_in(clone, "pull", "data.dvc")
    assert len(load_split(_data_cfg(clone, repo_root), "test")[1]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["intact", "damaged"])
def test_changed_data_names_the_recovery_that_works(
    repo_root: Path, tmp_path: Path, cache: str
) -> None:
    """Changed workspace data with the cache intact (`dvc checkout --force`), or with the cache
    copy damaged too (a corrupt object pulled before `verify = true`): the commands in the
    message restore the recorded data."""
    clone = _pulled_clone(repo_root, tmp_path)
    data_file = clone / "data" / "digits.csv.gz"
    _append_a_row(data_file)
    if cache == "damaged":
        cached = clone / ".dvc/cache/files/md5" / md5_file_name(repo_root)
        cached.chmod(0o644)
        cached.write_bytes(data_file.read_bytes())
    with pytest.raises(DataCorruptedError) as err:
        load_split(_data_cfg(clone, repo_root), "test")
    message = str(err.value)
    assert "\n" not in message and ("rm -rf" in message) == (cache == "damaged"), message
    _run_recovery(clone, message)
    assert len(load_split(_data_cfg(clone, repo_root), "test")[1]) > 0


def md5_file_name(repo_root: Path) -> str:
    """`xx/yyyy...` of digits.csv.gz's object in a DVC cache (from the committed remote)."""
    dir_md5 = recorded_dir_hash(repo_root / "data.dvc")
    remote = _remote_dir(repo_root)
    manifest = json.loads((remote / "files/md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    md5 = next(e["md5"] for e in manifest if e["relpath"] == "digits.csv.gz")
    return f"{md5[:2]}/{md5[2:]}"


def test_in_repo_remote_verifies_what_it_sends(repo_root: Path) -> None:
    config = configparser.ConfigParser()
    config.read(repo_root / ".dvc" / "config")
    default = config["core"]["remote"]
    assert config[f"'remote \"{default}\"'"].get("verify") == "true"
