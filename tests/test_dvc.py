"""DVC: data.dvc, the committed in-repo remote, the train stage, and a clean clone's `dvc pull`."""

from __future__ import annotations

import configparser
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

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


def test_train_stage_names_real_files_and_keys(repo_root: Path) -> None:
    stage = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["cmd"].split()[0] == "mlpipe-train"
    for dep in stage["deps"]:
        assert (repo_root / dep).exists(), dep
    for entry in stage["params"]:
        for file, keys in entry.items():
            conf = OmegaConf.to_container(OmegaConf.load(repo_root / file))
            for key in keys:
                _get(conf, key)  # KeyError names a param that no longer exists
    outs = [next(iter(o)) for o in stage["outs"]]
    metrics = [next(iter(m)) for m in stage["metrics"]]
    assert "artifacts/checkpoints/best.ckpt" in outs and metrics == ["reports/train/metrics.json"]
    ignored = subprocess.run(
        ["git", "check-ignore", *outs, *metrics], cwd=repo_root, capture_output=True, text=True
    )
    assert len(ignored.stdout.split()) == len(outs) + len(metrics), (
        "stage outputs must be git-ignored, never committed"
    )


def test_train_stage_outputs_match_the_config(repo_root: Path) -> None:
    stage = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["train"]
    with initialize_config_dir(
        version_base="1.3", config_dir=str(repo_root / "conf"), job_name="test"
    ):
        cfg = compose(config_name="train")  # the defaults the stage runs with, relative paths
    outs = {str(Path(next(iter(o)))) for o in stage["outs"]} | {
        str(Path(next(iter(m)))) for m in stage["metrics"]
    }
    for key in ("best_checkpoint", "metrics", "timing"):
        assert str(Path(cfg.outputs[key])) in outs, key


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
