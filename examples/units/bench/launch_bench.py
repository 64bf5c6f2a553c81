#!/usr/bin/env python3
"""Side-by-side launch benchmark for hv-compute (see docs/compute.md, "Benchmarks").

1. N tiny-guest units launched at once by one `hv-compute launch` (all guests ready = boot marker).
2. The same N guests started at once by running hv-vmm directly (no orchestrator): until each prints RDY.
3. The same N guests started at once under QEMU microvm (the peer), until each prints RDY on its serial.
4. Orchestrator overhead per launch, with forked supervisors (default) and exec'd ones
   (HV_COMPUTE_SUPERVISOR=exec): REPS sequential `hv-compute launch` of one unit each; overhead = launch
   command start -> guest ready, minus hv-vmm's own exec -> ready (both as hv-compute reports them), and
   externally: the `hv-compute launch` process's wall time minus hv-vmm's boot time.

Usage: launch_bench.py HV_COMPUTE HV_VMM GUEST_ELF N REPS
"""
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def wait_all_rdy(procs, stream_of, needle, timeout=60.0):
    """Waits until every process printed `needle` on its stream; returns seconds until the last did."""
    sel = selectors.DefaultSelector()
    buffers = {}
    for p in procs:
        stream = stream_of(p)
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ, p)
        buffers[p.pid] = b""
    pending = len(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            p = key.data
            chunk = key.fileobj.read() or b""
            buffers[p.pid] += chunk
            if needle in buffers[p.pid]:
                sel.unregister(key.fileobj)
                pending -= 1
            elif not chunk:
                sel.unregister(key.fileobj)
                pending -= 1
                print(f"  process {p.pid} ended without {needle!r}", file=sys.stderr)
    return time.monotonic(), pending


def parallel_bare(cmds, needle, stream="stdout"):
    start = time.monotonic()
    procs = [
        subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in cmds
    ]
    end, missing = wait_all_rdy(procs, lambda p: getattr(p, stream), needle)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return end - start, missing


def main():
    hv_compute, hv_vmm, guest, n, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    cores = os.cpu_count()
    work = tempfile.mkdtemp(prefix="hv-bench-")
    try:
        os.makedirs(f"{work}/spec/units")
        for i in range(n):
            with open(f"{work}/spec/units/tiny-{i:02}.toml", "w") as f:
                f.write(f'boot.kernel = "{guest}"\n[resources]\nmemory = "32M"\n')
        env = dict(os.environ, HV_SPEC_DIR=f"{work}/spec", HV_VMM_BIN=hv_vmm)

        # 1. hv-compute, N units at once
        env["HV_STATE_DIR"] = f"{work}/state-many"
        units = [f"tiny-{i:02}" for i in range(n)]
        start = time.monotonic()
        out = subprocess.run([hv_compute, "--json", "launch", *units], env=env, capture_output=True)
        wall = time.monotonic() - start
        outcomes = json.loads(out.stdout)
        ready = [o["ready_us"] for o in outcomes if o["ready_us"] is not None]
        print(f"hv-compute launch of {n} units at once: {len(ready)}/{n} ready, "
              f"all ready after {max(ready)/1000:.1f} ms (command wall {wall*1000:.1f} ms) -> "
              f"{len(ready)/wall:.0f} VMs/s = {len(ready)/wall/cores:.0f} VMs/s/core on {cores} cores")

        # 2. bare hv-vmm, N at once
        cmds = [[hv_vmm, "run", "--kernel", guest, "--memory", "32M", "--serial", "stdio"] for _ in range(n)]
        secs, missing = parallel_bare(cmds, b"RDY")
        print(f"bare hv-vmm x{n} at once (no orchestrator): {n-missing}/{n} printed RDY after {secs*1000:.1f} ms -> "
              f"{(n-missing)/secs:.0f} VMs/s = {(n-missing)/secs/cores:.0f} VMs/s/core")

        # 3. QEMU microvm, N at once
        qemu = shutil.which("qemu-system-x86_64")
        if qemu:
            cmds = [[qemu, "-M", "microvm", "-enable-kvm", "-m", "32M", "-nodefaults", "-no-user-config",
                     "-nographic", "-serial", "stdio", "-kernel", guest] for _ in range(n)]
            secs, missing = parallel_bare(cmds, b"RDY")
            print(f"QEMU microvm x{n} at once: {n-missing}/{n} printed RDY after {secs*1000:.1f} ms -> "
                  f"{(n-missing)/secs:.0f} VMs/s = {(n-missing)/secs/cores:.1f} VMs/s/core")
        else:
            print("QEMU microvm: skipped (qemu-system-x86_64 not installed)")

        # 4. per-launch overhead, sequential: forked supervisors (the default) and exec'd ones
        #    (HV_COMPUTE_SUPERVISOR=exec, the previous design), one after the other in this run.
        def summary(xs):
            xs = sorted(xs)
            return f"median {statistics.median(xs)/1000:.2f} ms, p90 {xs[int(len(xs)*0.9)-1]/1000:.2f} ms"

        for mode in ("fork", "exec"):
            env["HV_STATE_DIR"] = f"{work}/state-seq-{mode}"
            env["HV_COMPUTE_SUPERVISOR"] = mode
            internal, external, boots, to_supervisor, supervisor_to_vmm = [], [], [], [], []
            for _ in range(reps):
                start = time.monotonic()
                out = subprocess.run([hv_compute, "--json", "launch", "tiny-00"], env=env, capture_output=True)
                wall_us = (time.monotonic() - start) * 1e6
                o = json.loads(out.stdout)[0]
                internal.append(o["overhead_us"])
                to_supervisor.append(o["supervisor_spawned_us"])
                with open(f"{work}/state-seq-{mode}/instances/{o['instance']}/supervisor.log") as log:
                    for line in log:
                        if "spawned" in line:
                            supervisor_to_vmm.append(int(line.split(" spawned ")[1].split()[0]))
                boots.append(o["boot_time_us"])
                external.append(wall_us - o["boot_time_us"])
                time.sleep(0.05)
            print(f"[{mode} supervisors] {reps} sequential launches of one unit:")
            print(f"  hv-vmm boot (exec -> ready): {summary(boots)}")
            print(f"  orchestrator overhead (launch start -> ready, minus hv-vmm boot): {summary(internal)}")
            print(f"  launch start -> supervisor assigned and record committed: {summary(to_supervisor)}; "
                  f"supervisor has its instance -> hv-vmm spawned: {summary(supervisor_to_vmm)}")
            print(f"  overhead incl. hv-compute exec/exit (process wall minus hv-vmm boot): {summary(external)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
