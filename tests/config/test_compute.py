"""vapm.config.compute: the same results, in the same order, from local processes and from a Dask cluster.

The cluster here is a real `distributed.LocalCluster` in this process (two one-thread workers, no extra
processes: fast); tests/e2e/test_dask_cluster.py runs the stages against a scheduler and workers in their own
processes, and kills one.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vapm.config.compute import ComputeError, Executor, connect, scheduler_address, worker_fingerprint
from vapm.config.settings import ComputeSettings, check_address
from vapm.data.features.build import WRITE_ROWS, InterimDataError, featurize_acoustic, featurize_vision
from vapm.data.features.records import ImageRecord, read_record
from vapm.data.ingest.dataset import IngestSettings, ingest_vision
from tests.data.test_features import noise_clips, small_records, write_acoustic_interim, write_vision_interim


@pytest.fixture(scope="module")
def compute_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      scheduler_port=0, dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address


def digests(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def square(value: int) -> int:
    return value * value


def test_results_come_back_in_input_order_locally_and_from_the_cluster(compute_cluster):
    tasks = list(range(40))
    with Executor(1) as here, Executor(2) as processes, Executor(scheduler=compute_cluster) as cluster:
        assert cluster.distributed and cluster.workers == 2
        assert list(here.map(square, tasks)) == list(processes.map(square, tasks)) == \
            list(cluster.map(square, tasks)) == [value * value for value in tasks]


def test_ingest_writes_the_same_bytes_on_the_cluster(compute_cluster, tmp_path, ingest_make_zip,
                                                     ingest_encode_image):
    rng = np.random.default_rng(0)
    members = {f"NEU-data-TrainTest/{split}/{name}/{name.lower()}_{number}.png":
               ingest_encode_image(rng.integers(0, 256, (8 + number, 9), dtype=np.uint8))
               for name in ("Crazing", "Patches") for split in ("train", "test") for number in range(40)}
    archive = ingest_make_zip("NEU-data-TrainTest.zip", members)
    reports = {}
    for name, scheduler in (("local", None), ("cluster", compute_cluster)):
        settings = IngestSettings(on_bad_file="fail", test_fraction=0.2, seed=42, max_uncompressed_bytes=2**30,
                                  n_jobs=1, scheduler=scheduler)
        reports[name] = ingest_vision(archive, ["Crazing", "Patches"], tmp_path / name, settings)
    assert reports["local"] == reports["cluster"]
    assert digests(tmp_path / "local") == digests(tmp_path / "cluster") != {}


def test_featurize_computes_the_same_bytes_on_the_cluster(compute_cluster, tmp_path):
    write_acoustic_interim(tmp_path / "acoustic", noise_clips(7, 3_000))
    for name, scheduler in (("local", None), ("cluster", compute_cluster)):
        summary = featurize_acoustic(tmp_path / "acoustic", tmp_path / name / "images", tmp_path / name / "wp",
                                     *small_records(), n_jobs=1, chunk_clips=2, scheduler=scheduler)
        assert summary.workers == (2 if scheduler else 1)
    assert digests(tmp_path / "local") == digests(tmp_path / "cluster")


def test_featurize_resizes_images_and_masks_to_the_same_bytes_on_the_cluster(compute_cluster, tmp_path):
    rng = np.random.default_rng(3)
    n = WRITE_ROWS + 9  # two tasks, the second short
    images = [rng.integers(0, 256, (9 + i % 7, 12 + i % 5), dtype=np.uint8) for i in range(n)]
    manifest = write_vision_interim(tmp_path / "vision", images)
    # Ingest's masks: a 0/1 array per image that has one, at the image's offset in a masks.npy like pixels.npy.
    has_mask = np.arange(n) % 3 == 0
    masks = np.zeros(sum(image.size for image in images), dtype=np.uint8)
    for i in np.flatnonzero(has_mask):
        offset, size = int(manifest["offset"][i]), images[i].size
        masks[offset:offset + size] = rng.integers(0, 2, size, dtype=np.uint8)
    np.save(tmp_path / "vision" / "masks.npy", masks)
    manifest["mask_file"] = np.where(has_mask, "mask.png", "")
    manifest.iloc[::-1].to_parquet(tmp_path / "vision" / "manifest.parquet", index=False)
    # 32 px and 133 training images: the learnt image checks' statistics are computed too, two tasks of them.
    for name, scheduler in (("local", None), ("cluster", compute_cluster)):
        assert featurize_vision(tmp_path / "vision", tmp_path / name, ImageRecord(image_size=32, resize="pad"),
                                scheduler=scheduler) == n
    assert digests(tmp_path / "local") == digests(tmp_path / "cluster")
    assert read_record(tmp_path / "cluster").checks.likeness is not None
    with np.load(tmp_path / "cluster" / "features.npz") as saved:
        assert saved["masks"].shape == (n, 32, 32) and list(saved["has_mask"]) == list(has_mask)
        assert saved["masks"][has_mask].any() and not saved["masks"][~has_mask].any()


def test_a_task_error_reaches_the_stage_as_itself(compute_cluster, tmp_path):
    clips = noise_clips(4, 3_000)
    clips[3, 10] = np.nan
    write_acoustic_interim(tmp_path / "acoustic", clips)
    with pytest.raises(InterimDataError, match=r"preprocess_Reading3\.dat \(item 3\) holds NaN"):
        featurize_acoustic(tmp_path / "acoustic", tmp_path / "a", tmp_path / "w", *small_records(), n_jobs=1,
                           chunk_clips=2, scheduler=compute_cluster)


def test_a_workers_fingerprint_covers_code_libraries_and_pins(compute_cluster):
    from distributed import Client

    here = worker_fingerprint()
    assert len(here["vapm source sha256"]) == 64 and here["numpy"] == np.__version__
    assert here["$NPY_DISABLE_CPU_FEATURES"].startswith("AVX512F")
    with Client(compute_cluster, set_as_default=False) as client:
        fingerprints = client.run(worker_fingerprint)
    assert len(fingerprints) == 2 and all(there == here for there in fingerprints.values())


def test_the_allocator_tuning_goes_to_worker_environments_and_keeps_a_value_the_user_set():
    from vapm.cli.cluster import worker_environment, worker_exports
    from vapm.config.compute import ALLOCATOR_TUNING, tune_allocator

    environment = {"MALLOC_TRIM_THRESHOLD_": "1048576"}
    assert tune_allocator(environment) is False  # another environment: this process is left alone
    assert environment == {**ALLOCATOR_TUNING, "MALLOC_TRIM_THRESHOLD_": "1048576"}
    assert all(worker_environment()[name] for name in ALLOCATOR_TUNING)
    exports = worker_exports().splitlines()
    assert {f"export {name}={os.environ.get(name, value)}" for name, value in ALLOCATOR_TUNING.items()} <= \
        set(exports)


@pytest.mark.parametrize("asked, backend", [(None, "system"), ("mimalloc", "mimalloc")])
def test_ingest_and_featurize_give_arrow_the_system_allocator_unless_the_user_chose_one(asked, backend):
    """Arrow's mimalloc pool kept what parquet reads freed (docs/scaling.md, "Growth with the data"); the choice
    goes to the processes the stage starts through the environment."""
    probe = ("import os, pyarrow\nfrom vapm.config.compute import tune_allocator\ntune_allocator()\n"
             "print(pyarrow.default_memory_pool().backend_name, os.environ['ARROW_DEFAULT_MEMORY_POOL'])")
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if asked:
        environment["ARROW_DEFAULT_MEMORY_POOL"] = asked
    out = subprocess.run([sys.executable, "-c", probe], env=environment, check=True, capture_output=True, text=True)
    assert out.stdout.split() == [backend, asked or "system"]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tls://scheduler.example.org:443", "tcp://[::1]:8786"])
def test_scheduler_addresses_are_accepted(address):
    assert check_address(address) == address
    assert ComputeSettings(scheduler=address).scheduler == address


@pytest.mark.parametrize("address", ["127.0.0.1:8786", "http://127.0.0.1:8786", "tcp://127.0.0.1", "tcp://h:70000",
                                     "tcp://bad host:1"])
def test_other_addresses_are_refused_by_name(address, monkeypatch):
    with pytest.raises(ValueError, match="is not a Dask scheduler address"):
        ComputeSettings(scheduler=address)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with pytest.raises(ComputeError, match="DASK_SCHEDULER_ADDRESS=.* is not a Dask scheduler address"):
        scheduler_address(None)


def test_params_win_over_the_environment_and_empty_means_local(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert ComputeSettings(scheduler="").scheduler is None and scheduler_address(None) is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    assert scheduler_address(None) == "tcp://127.0.0.1:1"
    assert scheduler_address("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"


def test_an_unreachable_scheduler_is_one_error_naming_it():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ComputeError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        connect(f"tcp://127.0.0.1:{port}", timeout=2)


def test_a_worker_started_without_the_pins_is_refused_by_name(tmp_path):
    """A plain `dask worker` (NumPy loads before vapm could pin it) computes with this CPU's own kernels: a stage
    must not send it work. Real scheduler and worker processes on 127.0.0.1, stopped by their process ids."""
    import json
    import os
    import subprocess
    import sys
    import time

    import vapm
    from vapm.cli.cluster import stop_pids
    from vapm.config.cpu_dispatch import ALWAYS_PINNED

    dask = str(Path(sys.executable).with_name("dask"))
    environment = {name: value for name, value in os.environ.items() if name not in ALWAYS_PINNED}
    environment["PYTHONPATH"] = str(Path(vapm.__file__).resolve().parent.parent)
    scheduler_file = tmp_path / "scheduler.json"
    pids = {}
    try:
        pids["scheduler"] = subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file",
             str(scheduler_file)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        pids["worker"] = subprocess.Popen(
            [dask, "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
             "--dashboard-address", "127.0.0.1:0"],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
        with pytest.raises(ComputeError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ would compute other bytes than "
                                               r"this stage: \$ONEDNN_MAX_CPU_ISA '' \(here 'AVX2'\)"):
            with Executor(scheduler=address):
                pass
        stop_pids({"worker": pids.pop("worker")})
        # The same plain command, started as a batch job or a pod starts it, after `vapm cluster env`: accepted.
        vapm_command = Path(sys.executable).with_name("vapm")
        pids["worker"] = subprocess.Popen(
            ["bash", "-c", f'eval "$({vapm_command} cluster env)" && exec {dask} worker {address} --nthreads 1 '
                           "--no-nanny --host 127.0.0.1 --dashboard-address 127.0.0.1:0 --name from-env"],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
        from distributed import Client

        with Client(address, set_as_default=False) as client:
            while {w["name"] for w in client.scheduler_info()["workers"].values()} != {"from-env"}:
                assert time.monotonic() < deadline + 120, "the worker did not register"
                time.sleep(0.2)
        import math

        with Executor(scheduler=address) as cluster:  # (a function the worker can import: not this test module)
            assert list(cluster.map(math.factorial, [3, 4])) == [6, 24]
    finally:
        stop_pids(pids)
