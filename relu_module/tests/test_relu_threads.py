"""The thread pool and the settings: results independent of threads, no hang, no abort.

Hang and abort cases run in a subprocess with a timeout.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from relu_testing import bits, run_python

import relu_module
from relu_module import relu


def test_thread_count_does_not_change_results() -> None:
    x = np.random.default_rng(1).standard_normal(3_000_001).astype(np.float32)
    before = relu_module.get_num_threads()
    try:
        relu_module.set_num_threads(1)
        one = relu(x)
        relu_module.set_num_threads(3)
        three = relu(x)
    finally:
        relu_module.set_num_threads(before)
    np.testing.assert_array_equal(bits(one), bits(three))


def test_concurrent_python_threads() -> None:
    """The GIL is released for large arrays; concurrent callers share the pool safely."""
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(400_000 + i).astype(np.float64) for i in range(6)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = relu(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(results[i], np.maximum(x, 0))


@pytest.mark.timeout(120)
def test_env_var_sets_threads_and_fork_is_safe() -> None:
    """RELU_MODULE_NUM_THREADS is honoured; a forked child (DataLoader worker) rebuilds the pool."""
    code = """
    import os, numpy as np, relu_module as rm
    print(rm.get_num_threads())
    x = np.random.default_rng(0).standard_normal(2_000_000)
    rm.relu(x)  # starts the pool in the parent
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(rm.relu(x), np.maximum(x, 0))
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
    """
    proc = run_python(code, env={"RELU_MODULE_NUM_THREADS": "3"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "0"]


def test_set_num_threads_is_checked_and_capped() -> None:
    assert relu_module.MAX_THREADS == 1024
    for bad in (0, -1, relu_module.MAX_THREADS + 1, 10**30):
        with pytest.raises(ValueError, match=r"must be in \[1, 1024\]"):
            relu_module.set_num_threads(bad)
    for bad in (2.5, "4", True, None):
        with pytest.raises(TypeError, match="must be an integer"):
            relu_module.set_num_threads(bad)
    relu_module.set_num_threads(relu_module.MAX_THREADS)
    assert relu_module.get_num_threads() == relu_module.MAX_THREADS


@pytest.mark.timeout(120)
def test_pool_that_cannot_start_its_threads_degrades_with_a_warning() -> None:
    """The issue's hang: 1000 threads under a 2 GB address-space limit. The pool joins the
    threads that started, restarts as many as there are CPUs (the others had used up the address
    space), warns once and computes; the subprocess must end within its timeout.
    """
    import resource

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2_000_000 * 1024, 2_000_000 * 1024))

    code = """
    import warnings, numpy as np, relu_module as rm
    x = np.random.default_rng(0).standard_normal(10**6).astype(np.float32)
    ref = np.maximum(x, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = all(np.array_equal(rm.relu(x), ref) for _ in range(3))
    print(ok, rm.get_num_threads(), len(caught))
    print(caught[0].message if caught else "")
    """
    proc = run_python(
        code, env={"RELU_MODULE_NUM_THREADS": "1000"}, timeout=60, preexec_fn=limit_address_space
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ok, threads, warned = proc.stdout.splitlines()[0].split()
    assert ok == "True" and warned == "1", proc.stdout
    assert int(threads) == min(len(__import__("os").sched_getaffinity(0)), 1000)
    assert "could only start" in proc.stdout and f"running on {threads}" in proc.stdout


@pytest.mark.timeout(120)
def test_daemon_thread_in_a_gil_released_call_exits_cleanly() -> None:
    """Python 3.11 ends a daemon thread that re-takes the GIL at exit with pthread_exit; through
    pybind11's noexcept gil_scoped_release that was std::terminate (exit 134, as torch.relu
    still does). relu_module parks such a thread instead, so exit is clean, as numpy's is.
    """
    code = """
    import threading, time, numpy as np, relu_module as rm
    x = np.zeros(100_000, np.float32)  # above RELEASE_GIL_MIN_BYTES: the GIL is released
    threading.Thread(target=lambda: [rm.relu(x) for _ in iter(int, 1)], daemon=True).start()
    time.sleep(0.3)
    """
    for _ in range(5):  # the abort depended on timing: several exits
        proc = run_python(code, timeout=60)
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


# Each case: (RELU_MODULE_NUM_THREADS, RELU_MODULE_CACHE_MB) -> (threads or None for the
# default, cache MiB, number of warnings). A warning must name what is used instead.
SETTINGS_CASES = {
    "plain": (("3", "5"), (3, 5, 0)),
    "blanks-allowed": ((" 4", "7 "), (4, 7, 0)),
    "plus-sign": (("+4", "+5"), (None, 1024, 2)),
    "minus-zero": (("-0", "-0"), (None, 1024, 2)),
    "superscript": (("²", "²"), (None, 1024, 2)),
    "out-of-range": (("1025", "0"), (None, 0, 1)),
    "overflow": (("99999999999999999999", "99999999999999999999"), (None, 1024, 2)),
    "cache-overflows-bytes": (("1", "17592186044416"), (1, 1024, 1)),
    "empty": (("", ""), (None, 1024, 2)),
}


@pytest.mark.parametrize("case", SETTINGS_CASES)
def test_settings_parsed_in_one_place_with_truthful_warnings(case: str) -> None:
    (threads_env, cache_env), (threads, cache_mb, n_warnings) = SETTINGS_CASES[case]
    code = """
    import logging, numpy as np
    logging.basicConfig(level=logging.WARNING, format="WARN %(message)s")
    import relu_module as rm
    rm.relu(np.zeros(10**6))
    print(rm.get_num_threads(), rm._ext.cache_limit_bytes() >> 20, rm._ext.cache_limit_bytes())
    """
    env = {"RELU_MODULE_NUM_THREADS": threads_env, "RELU_MODULE_CACHE_MB": cache_env}
    proc = run_python(code, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got_threads, got_mb, got_bytes = map(int, proc.stdout.split())
    default = len(__import__("os").sched_getaffinity(0))
    assert got_threads == (threads if threads is not None else default)
    assert got_mb == cache_mb and got_bytes == cache_mb << 20
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARN ")]
    assert len(warnings) == n_warnings, proc.stderr
    for line in warnings:
        assert "ignoring it and using the default of" in line
        if "NUM_THREADS" in line:
            assert f"default of {default} thread(s)" in line
        else:
            assert "default of 1024 MiB" in line


@pytest.mark.parametrize(
    ("value", "spin", "warned"),
    [("0", 0, False), ("500", 500, False), ("-1", 2000, True), ("1000001", 2000, True)],
)
def test_spin_setting(value: str, spin: int, warned: bool) -> None:
    code = """
    import logging
    logging.basicConfig(level=logging.WARNING, format="WARN %(message)s")
    import numpy as np, relu_module as rm
    x = np.random.default_rng(0).standard_normal(10**6)
    assert all(np.array_equal(rm.relu(x), np.maximum(x, 0)) for _ in range(20))
    print(rm._ext.spin_us())
    """
    proc = run_python(code, env={"RELU_MODULE_SPIN_US": value}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) == spin
    assert ("WARN RELU_MODULE_SPIN_US=" in proc.stderr) == warned, proc.stderr
    if warned:
        assert "using the default of 2000 us" in proc.stderr


@pytest.mark.timeout(120)
def test_idle_process_pays_almost_no_cpu_after_one_call() -> None:
    """After an isolated call the workers spin only briefly (50 us), then sleep: a process that
    made one call and then sleeps 1 s uses well under 20 ms of CPU (torch: OpenMP spins)."""
    code = """
    import resource, time, numpy as np, relu_module as rm
    x = np.random.default_rng(0).standard_normal(10**6).astype(np.float32)
    rm.relu(x)  # parallel: the pool starts
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(1.0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    """
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout) < 0.02, proc.stdout


@pytest.mark.timeout(120)
def test_resizing_the_pool_does_not_wait_for_spinning_workers() -> None:
    """A pool replaced by set_num_threads joins its workers at once, even with a 1 s spin."""
    code = """
    import time, numpy as np, relu_module as rm
    x = np.random.default_rng(0).standard_normal(10**6)
    t0 = time.perf_counter()
    for i in range(20):
        rm.set_num_threads(2 + i % 2)
        assert np.array_equal(rm.relu(x), np.maximum(x, 0))
        rm.relu(x)
    print(time.perf_counter() - t0)
    """
    proc = run_python(code, env={"RELU_MODULE_SPIN_US": "1000000"}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout) < 10.0  # 20 resizes; waiting out the spin would take >= 20 s


@pytest.mark.timeout(120)
def test_workers_started_in_flush_denormal_mode_follow_the_caller_later() -> None:
    """Threads inherit MXCSR when they start: a pool made while torch.set_flush_denormal(True)
    was on must still compute without it once the caller turned it off (and the reverse)."""
    code = """
    import numpy as np, torch, relu_module as rm
    x = np.full(4_000_000, -1e-40, np.float32)
    torch.set_flush_denormal(True)
    assert set(np.unique(rm.relu(x).view(np.uint32))) == {0x80000000}  # pool starts under DAZ
    torch.set_flush_denormal(False)
    for _ in range(5):
        assert set(np.unique(rm.relu(x).view(np.uint32))) == {0}  # -1e-40 < 0: +0.0
        assert set(np.unique(rm.relu_backward(np.ones_like(x), -x).view(np.uint32))) == {0x3F800000}
    print("ok")
    """
    proc = run_python(code, env={"RELU_MODULE_NUM_THREADS": "2"}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.timeout(120)
def test_dense_tensors_on_torchs_threads_follow_the_callers_flush_denormal_mode() -> None:
    """Dense tensors run on torch's OpenMP team, whose workers keep the MXCSR they started with:
    a team started under torch.set_flush_denormal(True) must not leak DAZ into a later call made
    without it, and the reverse; every share runs under the caller's MXCSR, then gives the
    worker its own back (torch's threads are not ours to change)."""
    code = """
    import torch, relu_module.torch as rt
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # the first parallel region: the team starts with DAZ
    torch.zeros(1_000_000).add_(1)
    torch.set_flush_denormal(False)
    bits = lambda t: set(t.view(torch.int32).unique().tolist())
    x = torch.full((1_000_000,), -1e-40)
    assert bits(x) == {-2147412286}, bits(x)  # the denormal itself
    # (torch.relu(x) here mixes -0.0 and +0.0: its workers compute under their own DAZ)
    for _ in range(5):
        assert bits(rt.relu(x)) == {0}  # -1e-40 < 0: +0.0, on every share
        y = x.clone(); rt.relu(y, inplace=True); assert bits(y) == {0}
        o = torch.empty_like(x); rt.relu_out(x, o); assert bits(o) == {0}
    torch.set_flush_denormal(True)
    assert bits(rt.relu(x)) == {-2**31}
    print("ok")
    """
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [10_000, 1_000_000], ids=["gil-release-size", "pool-size"])
def test_call_from_del_at_exit_does_not_hang(n: int) -> None:
    """The issue's hang: a __del__ in the final garbage collection (a reference cycle alive at
    exit) calls relu_module on >= 32 KiB. While the interpreter finalises the call runs on the
    caller's thread with the GIL held, so exit completes; the result is still right.
    """
    code = f"""
    import gc, os, numpy as np, relu_module as rm

    class Cycle:
        def __del__(self):
            x = np.linspace(-1, 1, {n}, dtype=np.float32)
            y = rm.relu(x)
            rm.relu_(x)
            ok = np.array_equal(x, y) and np.array_equal(y, np.maximum(x, 0))
            os.write(1, b"del-ran %d\\n" % ok)

    def make_cycle():
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a

    gc.set_threshold(0)  # no automatic collection: the cycle lives until Py_FinalizeEx's
    make_cycle()  # collection, which runs once the interpreter is finalising
    """
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["del-ran", "1", "del-ran", "1"], proc.stdout


@pytest.mark.timeout(180)
def test_degraded_pool_warning_comes_before_the_write() -> None:
    """warnings as errors and a pool that cannot start its threads: an array is not written
    (the warning comes first); a tensor is written and its version bumped before torch raises
    the op's warning, so a gradient through the saved tensor raises instead of being wrong.
    The tensor is strided: dense tensors run on torch's intra-op threads, not on the pool.
    """
    import resource

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    code = """
    import warnings, numpy as np, torch, relu_module as rm
    b = np.full(10**6, -1.0, np.float32)
    warnings.simplefilter("error")
    try:
        rm.relu_(b)
        print("no-warning")
    except RuntimeWarning as w:
        print("warned", "could only start" in str(w), bool((b == -1).all()))
    rm.set_num_threads(1000)  # the pool degrades again on the next parallel call
    w = torch.ones(10**6, requires_grad=True)
    t = torch.full((2 * 10**6,), -1.0)[::2]  # strided: the kernels' own pool runs it
    y = (w * t).sum()
    try:
        rm.relu_(t)
        print("no-warning")
    except UserWarning as w:  # TORCH_WARN: torch's own warning class
        print("tensor-warned", "could only start" in str(w))
    try:
        y.backward()
        print("backward-ran", w.grad[0].item())
    except RuntimeError as err:
        print("backward-raised", "modified by an inplace operation" in str(err))
    """
    proc = run_python(
        code, env={"RELU_MODULE_NUM_THREADS": "1000"}, timeout=150, preexec_fn=limit_address_space
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "warned True True", proc.stdout
    assert lines[1:] == ["tensor-warned True", "backward-raised True"], proc.stdout


def test_mid_size_policy_comes_from_this_cpus_caches() -> None:
    """Thresholds follow the caches sysfs reports (L2/2 for threads, LLC/2 for streaming)."""
    from pathlib import Path

    policy = relu_module._ext.policy()
    sizes: dict[int, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        if (index / "type").read_text().strip() == "Instruction":
            continue
        text = (index / "size").read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes[int((index / "level").read_text())] = int(text.rstrip("KMG")) * scale
    if 2 not in sizes:
        pytest.skip("sysfs reports no L2 cache here: the policy uses its stated fallback")
    assert policy["source"] == "sysfs"
    assert policy["l2_bytes"] == sizes[2] and policy["llc_bytes"] == sizes[max(sizes)]
    assert policy["parallel_min_bytes"] == sizes[2] // 2 == relu_module._ext.PARALLEL_MIN_BYTES
    assert policy["stream_min_bytes"] == sizes[max(sizes)] // 2
    assert "L2/2" in policy["why"] and "LLC/2" in policy["why"]
