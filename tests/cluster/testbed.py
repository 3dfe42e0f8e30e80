"""Multi-host test beds for the cluster tests: network namespaces made by
cluster/testbed/netns.sh, and a kvshard cluster started across them with cluster/kvshard-launch.
Each test file uses its own prefix and subnet, so test beds never collide."""

import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serving"))
import harness  # noqa: E402

NETNS = os.path.join(harness.REPO, "cluster", "testbed", "netns.sh")
LAUNCH = os.path.join(harness.REPO, "cluster", "kvshard-launch")


def can_run():
    """Namespaces need root and iproute2; a test that cannot make them says why."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        return "needs iproute2"
    return None


class Testbed:
    def __init__(self, hosts, prefix, subnet):
        self.hosts, self.prefix, self.subnet = hosts, prefix, subnet
        self.env = dict(os.environ, KVSHARD_NETNS_PREFIX=prefix, KVSHARD_NETNS_SUBNET=subnet)
        self.run("up", str(hosts))

    def run(self, *args, check=True):
        return subprocess.run([NETNS] + list(args), env=self.env, check=check,
                              capture_output=True, text=True, timeout=60)

    def address(self, i):
        return "%s.%d" % (self.subnet, i)

    def name(self, i):
        return "%s%d" % (self.prefix, i)

    def hostfile(self, slots, directory):
        path = os.path.join(directory, "hostfile")
        with open(path, "w") as f:
            f.write(self.run("hostfile", str(self.hosts), str(slots)).stdout)
        return path

    def netem(self, i, spec):
        self.run("netem", self.name(i), *spec.split())

    def link(self, i, state):
        self.run("link", self.name(i), state)

    def down(self):
        self.run("down", check=False)


class Cluster(harness.ServerProcess):
    """kvshard-launch on host 1 of a test bed; rank 0 serves on host 1's address."""

    def __init__(self, bed, slots, model=harness.STORIES, extra=(), step_delay_ms=0,
                 launch_args=()):
        self.bed = bed
        self.dir = tempfile.mkdtemp(prefix="kvshard-cluster-")
        self.port = harness.free_port()
        self.host = bed.address(1)
        self.pid_file = os.path.join(self.dir, "rank0.pid")
        self.log_path = os.path.join(self.dir, "launch.log")
        hostfile = bed.hostfile(slots, self.dir)
        env = dict(bed.env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        if step_delay_ms:
            env["KVSHARD_DEBUG_STEP_DELAY_MS"] = str(step_delay_ms)
        cmd = [NETNS, "exec", bed.name(1), LAUNCH, "--hostfile", hostfile, "--model", model,
               "--rsh", NETNS + " rsh", "--iface", bed.subnet + ".0/24", "--shared-cores",
               "--kvshard", harness.BIN] + list(launch_args) + ["--", "--host", self.host, "--port", str(self.port),
               "--pid-file", self.pid_file] + list(extra)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + 90
        while not (os.path.exists(self.pid_file) and self.serving()):
            if self.proc.poll() is not None:
                raise RuntimeError("cluster exited during start-up:\n" + self.read_log())
            if time.time() > deadline:
                self.kill()
                raise RuntimeError("cluster not serving after 90 s:\n" + self.read_log())
            time.sleep(0.2)
        with open(self.pid_file) as f:
            self.rank0_pid = int(f.read())

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self.log.close()

    def stop(self, timeout=60):
        """SIGTERM to kvshard-launch: a clean stop through rank 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def rank_processes(self):
        """Live kvshard processes of this cluster (by its unique port), on every host."""
        return rank_processes(self.port)


rank_processes = harness.rank_processes
