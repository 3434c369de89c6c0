#!/usr/bin/env python3
"""The end-to-end benchmark behind scripts/bench (run that, not this).

Runs the release binary as separate processes on loopback: the Asana
and Anaplan simulators (`auditrelay simulate`), the daemon (`auditrelay
run`), a Tansu broker for the Kafka rows, the bare fetch loop
(examples/fetch_loop) and the bare producer (examples/produce_loop).
Progress goes to stderr; stdout gets the machine, the exact commands and
configs, and one markdown table.

Environment (scripts/bench documents the same):
  BENCH_QUICK=1            short run: 100,000 backlog events, 15 s of live tail
  BENCH_EVENTS=N           backlog events for the backfill rows (default 1,000,000)
  BENCH_LIVE_SECONDS=S     live tail duration (default 60; quick 15)
  BENCH_LIVE_RATE=R        live events per second (default 500)
  BENCH_LIVE_WARMUP=S      live events of the first S seconds are not in the
                           lag figures (default 2)
  BENCH_POLL_INTERVAL=D    the source's poll_interval in the live rows (default 1s)
  BENCH_BATCH_SIZE=N       sinks' batch_size (default: the daemon's default)
  BENCH_ANAPLAN_EVENTS=N   backlog of the Anaplan backfill rows (default
                           200,000; quick 20,000)
  BENCH_ANAPLAN_LATENCY=D  simulated latency of each Anaplan request
                           (default 400ms)
  BENCH_SCENARIOS=a,b      subset of: fetch,produce,backfill-file,backfill-kafka,
                           live-file,live-kafka,anaplan-backfill,slices,serial
                           (default all)
  BENCH_SLICE_EVENTS=N     backlog of the rate-limit rows (default 1,000,000;
                           quick 100,000; the serial row reads 1/20 of it)
  BENCH_SLICE_LATENCY=D    simulated latency per request there (default 400ms)
  BENCH_DIR=DIR            work directory (default: a new one under $TMPDIR);
                           kept with BENCH_KEEP=1
"""

import datetime
import json
import math
import os
import platform
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

# ---------------------------------------------------------------- settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ["BENCH_BIN"]
FETCH_LOOP = os.environ["BENCH_FETCH_LOOP"]
PRODUCE_LOOP = os.environ.get("BENCH_PRODUCE_LOOP", "")
TANSU = os.environ.get("BENCH_TANSU", "")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
EVENTS = int(os.environ.get("BENCH_EVENTS", "100000" if QUICK else "1000000"))
LIVE_SECONDS = float(os.environ.get("BENCH_LIVE_SECONDS", "15" if QUICK else "60"))
LIVE_RATE = float(os.environ.get("BENCH_LIVE_RATE", "500"))
LIVE_WARMUP = float(os.environ.get("BENCH_LIVE_WARMUP", "2"))
POLL_INTERVAL = os.environ.get("BENCH_POLL_INTERVAL", "1s")
BATCH_SIZE = os.environ.get("BENCH_BATCH_SIZE", "")
ANAPLAN_EVENTS = int(os.environ.get("BENCH_ANAPLAN_EVENTS", "20000" if QUICK else "200000"))
ANAPLAN_LATENCY = os.environ.get("BENCH_ANAPLAN_LATENCY", "400ms")
# The daemon's default page size: the rows compare parallel_pages only.
ANAPLAN_PAGE_SIZE = 1000
ALL_SCENARIOS = [
    "fetch", "produce", "backfill-file", "backfill-kafka", "live-file", "live-kafka", "anaplan-backfill",
    "slices", "serial",
]
SLICE_EVENTS = int(os.environ.get("BENCH_SLICE_EVENTS", "100000" if QUICK else "1000000"))
SLICE_LATENCY = os.environ.get("BENCH_SLICE_LATENCY", "400ms")
# Asana's limit and page size: the bound on any client's backfill rate.
ASANA_RPM = 1500
ASANA_PAGE = 100
RATE_LIMIT_BOUND_EPS = ASANA_RPM / 60 * ASANA_PAGE
TARGET_SLICES_SHARE = 0.9
SCENARIOS = [
    s.strip()
    for s in os.environ.get("BENCH_SCENARIOS", ",".join(ALL_SCENARIOS)).split(",")
    if s.strip()
]
TOKEN = "bench-token"
WORKSPACE = "1200000000000000"
TOPIC = "auditrelay.asana"
KAFKA_PARTITIONS = 3
# librdkafka's queue bounds for the Kafka rows (the daemon's sink and the
# bare producer alike).
KAFKA_QUEUE_PROPERTIES = [("queue.buffering.max.messages", "20000"), ("queue.buffering.max.kbytes", "16384")]
SEED = 42
# Loose ceilings, so a broken run ends instead of hanging.
BACKFILL_TIMEOUT = 60 + EVENTS / 1000
LIVE_DRAIN_TIMEOUT = 60

TARGET_FILE_EPS = 100_000
TARGET_KAFKA_EPS = 50_000
TARGET_RATIO = 0.8
TARGET_RSS_FILE = 40
TARGET_RSS_KAFKA = 80
TARGET_LAG_SLACK_MS = 250


def log(message):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


def parse_duration_ms(text, name="BENCH_POLL_INTERVAL"):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if not match:
        raise SystemExit(f"{name}: {text!r} is not like 500ms, 1s or 2m")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 1, "s": 1000, "m": 60000}[unit]


POLL_MS = parse_duration_ms(POLL_INTERVAL)
ANAPLAN_LATENCY_MS = parse_duration_ms(ANAPLAN_LATENCY, "BENCH_ANAPLAN_LATENCY")
# One page at a time at the simulated latency, with room to spare.
ANAPLAN_TIMEOUT = 60 + 2 * math.ceil(ANAPLAN_EVENTS / ANAPLAN_PAGE_SIZE) * ANAPLAN_LATENCY_MS / 1000

# ------------------------------------------------------- process handling

COMMANDS = []  # (scenario, text) in the order they ran
CHILDREN = []  # every Popen still possibly running


def record(scenario, text):
    COMMANDS.append((scenario, text))


def spawn(scenario, cmd, stdout_path, stderr_path, capture_stdout=False):
    record(scenario, "$ " + shlex.join(cmd))
    stdout = subprocess.PIPE if capture_stdout else open(stdout_path, "wb")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=open(stderr_path, "wb"),
        cwd=ROOT,
    )
    CHILDREN.append(proc)
    return proc


def stop(proc, timeout=30.0):
    """SIGTERM, a bounded wait, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            proc.kill()
            proc.wait(10)
    if proc in CHILDREN:
        CHILDREN.remove(proc)
    return proc.returncode


def stop_all():
    for proc in list(CHILDREN):
        try:
            stop(proc, timeout=10)
        except Exception as e:  # cleaning up: keep going
            log(f"stopping pid {proc.pid}: {e}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {limit}s")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a live process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5); fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu(pid, top=5):
    """The busiest live threads as "name seconds", and how many there are.
    The runtime's workers and its blocking pool (SQLite calls, file writes)
    are all named "auditrelay"; librdkafka's are "rdk:*"."""
    threads = []
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"{task_dir}/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        threads.append(((int(fields[11]) + int(fields[12])) / CLK_TCK, name))
    threads.sort(reverse=True)
    busiest = ", ".join(f"{name} {secs:.1f}" for secs, name in threads[:top])
    return f"{len(threads)} threads, busiest {busiest}"


def count_lines(path):
    """Complete lines in a file sink's output and its rotated copies."""
    total = 0
    for candidate in [path] + [f"{path}.{n}" for n in range(1, 11)]:
        try:
            with open(candidate, "rb") as f:
                while chunk := f.read(1 << 20):
                    total += chunk.count(b"\n")
        except FileNotFoundError:
            pass
    return total


def peak_rss_mib(pid):
    """VmHWM (peak resident set) of a live process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


# ---------------------------------------------------------------- the parts


class Simulator:
    def __init__(self, scenario, work, extra, anaplan=False, rate_limit=1_000_000_000):
        """With `anaplan`, `extra` must start the Anaplan simulator too
        (--anaplan-listen): its URL is `anaplan_url`."""
        self.scenario = scenario
        cmd = [
            BIN, "simulate",
            "--listen", "127.0.0.1:0",
            "--seed", str(SEED),
            "--token", TOKEN,
            # By default far above what any run needs: those rows measure
            # the pipeline, not Asana's 1500/min. The rate-limit rows pass
            # Asana's limit.
            "--rate-limit", str(rate_limit),
        ] + extra
        self.proc = spawn(scenario, cmd, None, os.path.join(work, "simulator.log"), capture_stdout=True)
        line = self._read_line(30)
        match = re.search(r"listening on (http://\S+/api/1\.0)", line)
        if not match:
            raise RuntimeError(f"simulator did not say where it listens: {line!r}")
        self.base_url = match.group(1)
        self.admin = self.base_url.replace("/api/1.0", "/_sim")
        self.anaplan_url = None
        if anaplan:
            line = self._read_line(30)
            match = re.search(r"anaplan listening on (http://\S+)", line)
            if not match:
                raise RuntimeError(f"simulator did not say where Anaplan listens: {line!r}")
            self.anaplan_url = match.group(1)

    def _read_line(self, limit):
        """The next line the simulator prints, read from the pipe's file
        descriptor (not through a buffer that could hold the next line
        where select() does not see it)."""
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + limit
        pending = getattr(self, "_pending", b"")
        while b"\n" not in pending:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"simulator printed no line within {limit}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("simulator exited before printing where it listens")
            pending += chunk
        line, self._pending = pending.split(b"\n", 1)
        sel.close()
        return line.decode()

    def stats(self):
        return json.loads(http_get(self.admin + "/stats"))

    def anaplan_stats(self):
        return json.loads(http_get(self.anaplan_url + "/_sim/anaplan/stats"))

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        stop(self.proc)


class Broker:
    def __init__(self, scenario, work):
        if not TANSU:
            raise RuntimeError("tansu is not installed (scripts/test installs it)")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.address}"
        cmd = [
            TANSU, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        self.proc = spawn(scenario, cmd, os.path.join(work, "tansu.out"), os.path.join(work, "tansu.err"))
        wait_port(self.port, 30, "tansu")
        create = [
            TANSU, "topic", "create", TOPIC,
            "--partitions", str(KAFKA_PARTITIONS),
            "--broker", url,
        ]
        record(scenario, "$ " + shlex.join(create))
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL, timeout=60, cwd=ROOT)

    def read_back(self, expected, limit=180):
        """Reads the whole topic with an independent consumer: (messages,
        distinct keys). Tansu's reported high watermarks lag behind what it
        serves, so the messages are counted instead."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {"bootstrap.servers": self.address, "group.id": "bench-read-back", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(KAFKA_PARTITIONS)])
        count, keys = 0, set()
        deadline = time.monotonic() + limit
        quiet_since = time.monotonic()
        try:
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
                messages = consumer.consume(num_messages=10000, timeout=0.5)
                if messages:
                    quiet_since = time.monotonic()
                for message in messages:
                    if not message.error():
                        count += 1
                        keys.add(int(message.key()))
                if count >= expected and len(keys) >= expected:
                    break
        finally:
            consumer.close()
        return count, len(keys)

    def stop(self):
        stop(self.proc)


def daemon_config(work, sim, broker, source_extra, file_extra="", source_table=None):
    """The daemon's configuration file (one source, one sink: a file sink, or
    Kafka when `broker` is given), its metrics port and its sink's id. The
    source is the Asana simulator's workspace unless `source_table` gives
    another `[sources.bench]` table."""
    metrics_port = free_port()
    batch = f"batch_size = {BATCH_SIZE}\n" if BATCH_SIZE else ""
    if broker is None:
        sink_table = f"""[sinks.file]
kind = "file"
path = "{work}/out/events.jsonl"
{batch}{file_extra}"""
    else:
        sink_table = f"""[sinks.kafka]
kind = "kafka"
brokers = "{broker.address}"
topic = "auditrelay.{{source_kind}}"
{batch}[sinks.kafka.properties]
# librdkafka's own queue, bounded (its defaults allow 100,000 messages / 1 GiB).
""" + "".join(f'"{name}" = "{value}"\n' for name, value in KAFKA_QUEUE_PROPERTIES)
    text = f"""shutdown_grace = "10s"
[state]
path = "{work}/state/state.db"
[http]
listen = "127.0.0.1:{metrics_port}"
[log]
level = "info"
{source_table or asana_source(sim)}{source_extra}
{sink_table}"""
    path = os.path.join(work, "auditrelay.toml")
    with open(path, "w") as f:
        f.write(text)
    return path, metrics_port, ("file" if broker is None else "kafka")


def asana_source(sim):
    return f"""[sources.bench]
kind = "asana"
base_url = "{sim.base_url}"
workspace_gid = "{WORKSPACE}"
token = "{TOKEN}"
"""


def anaplan_source(sim):
    # The simulator's default auditor login.
    return f"""[sources.bench]
kind = "anaplan"
auth_url = "{sim.anaplan_url}"
audit_url = "{sim.anaplan_url}/audit/api/1"
api_url = "{sim.anaplan_url}/2/0"
user = "auditor@example.com"
password = "sim-password"
page_size = {ANAPLAN_PAGE_SIZE}
"""


class Daemon:
    def __init__(self, scenario, work, config, metrics_port, sink_id):
        self.sink_id = sink_id
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with open(config) as f:
            record(scenario, f"$ cat > {config} <<'EOF'\n{f.read().rstrip()}\nEOF")
        cmd = [BIN, "run", "--config", config]
        self.started = time.time()
        self.proc = spawn(scenario, cmd, os.path.join(work, "daemon.out"), os.path.join(work, "daemon.log"))

    def metrics(self):
        """The /metrics text, or "" while the daemon is not serving it."""
        try:
            return http_get(self.metrics_url, timeout=1.0)
        except OSError:
            return ""

    def metric(self, name, label, text=None):
        """The sum of a metric's samples that carry `label` (e.g. sink="file")."""
        if text is None:
            text = self.metrics()
        total = None
        for line in text.splitlines():
            if line.startswith(name) and label in line:
                total = (total or 0) + float(line.rsplit(" ", 1)[1])
        return total

    def acknowledged(self, text=None):
        return self.metric("auditrelay_sink_events_acknowledged_total", f'sink="{self.sink_id}"', text)

    def stored(self, text=None):
        return self.metric("auditrelay_source_events_stored_total", 'source="bench"', text)

    def alive(self):
        return self.proc.poll() is None

    def wait_for_backlog(self, name, work, total, timeout):
        """Polls /metrics until the sink acknowledged `total` events or
        `timeout` seconds after the start passed: (acknowledged, when all
        were acknowledged or None, when the source had stored them all or
        None)."""
        deadline = self.started + timeout
        acked, done_at, stored_at = 0, None, None
        last_report = time.monotonic()
        while time.time() < deadline:
            if not self.alive():
                raise RuntimeError(f"daemon exited early ({self.proc.returncode}); see {work}/daemon.log")
            text = self.metrics()
            acked = self.acknowledged(text) or 0
            if stored_at is None and (self.stored(text) or 0) >= total:
                stored_at = time.time()
            if acked >= total:
                done_at = time.time()
                break
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                log(f"{name}: {acked:.0f} / {total} acknowledged")
            time.sleep(0.05)
        return acked, done_at, stored_at

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def rss(self):
        return peak_rss_mib(self.proc.pid)

    def stop(self):
        code = stop(self.proc)
        if code != 0:
            log(f"daemon exited with {code}; see its log")
        return code


def new_workdir(base, name):
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.join(path, "out"), exist_ok=True)
    os.makedirs(os.path.join(path, "state"), exist_ok=True)
    return path


def backlog_flags():
    return ["--events", str(EVENTS), "--backlog-span", "1h", "--rate", "0", "--max-live", "0"]


# --------------------------------------------------------------- scenarios


def backlog_row(acked, wall, cpu, rss, done_at, notes):
    """A backfill row of the table from what its run measured."""
    return {
        "events": int(acked),
        "wall": wall,
        "eps": acked / wall if wall > 0 else 0,
        "cpu_per_m": cpu / acked * 1e6 if acked else float("nan"),
        "rss": rss,
        "complete": done_at is not None,
        "notes": "; ".join(notes),
    }


def run_loop(scenario, what, cmd, work):
    """Runs a baseline loop (examples/*_loop) to its end: the JSON object it
    prints last."""
    err = os.path.join(work, f"{what.replace(' ', '_')}.err")
    proc = spawn(scenario, cmd, None, err, capture_stdout=True)
    try:
        out, _ = proc.communicate(timeout=BACKFILL_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{what} timed out after {BACKFILL_TIMEOUT:.0f}s")
    finally:
        # Whatever stopped the wait (Ctrl-C included), the loop does not
        # outlive it once it is no longer among the children to stop.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc in CHILDREN:
            CHILDREN.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {open(err).read()[-500:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def run_fetch(base):
    work = new_workdir(base, "fetch")
    sim = Simulator("bare fetch loop", work, backlog_flags())
    try:
        cmd = [FETCH_LOOP, "--base-url", sim.base_url, "--token", TOKEN, "--events", str(EVENTS)]
        # RUSAGE_CHILDREN counts children once they are waited for. The
        # simulator runs on until after the loop, and this script has no
        # threads, so the difference is the loop's CPU alone (its start-up
        # included).
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run_loop("bare fetch loop", "fetch loop", cmd, work)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sim_cpu = sim.cpu()
    finally:
        sim.stop()
    loop_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # How much of the machine the baseline used: one request at a time, so
    # the loop and the simulator take turns on about one core.
    cores = (loop_cpu + sim_cpu) / result["seconds"] if result["seconds"] else float("nan")
    return {
        "events": result["events"],
        "wall": result["seconds"],
        "eps": result["events_per_second"],
        "cpu_per_m": loop_cpu / result["events"] * 1e6 if result["events"] else float("nan"),
        "notes": f"{result['pages']} pages; loop CPU {loop_cpu:.1f} s, simulator CPU {sim_cpu:.1f} s:"
        f" {cores:.2f} of a core between them",
    }


def run_produce(base):
    """The Kafka baseline: examples/produce_loop hands envelopes to Tansu
    with the daemon's producer settings and the bench's queue bounds, as
    fast as librdkafka takes them. No source, no state file, no batches."""
    if not PRODUCE_LOOP:
        raise RuntimeError("BENCH_PRODUCE_LOOP is not set (scripts/bench builds examples/produce_loop)")
    name = "bare producer → kafka"
    work = new_workdir(base, "produce")
    broker = Broker(name, work)
    # Only the sample records come from the simulator.
    sim = Simulator(name, work, ["--events", "1000", "--backlog-span", "1h", "--rate", "0", "--max-live", "0"])
    try:
        cmd = [
            PRODUCE_LOOP, "--base-url", sim.base_url, "--token", TOKEN,
            "--brokers", broker.address, "--topic", TOPIC, "--messages", str(EVENTS),
        ] + [arg for prop in KAFKA_QUEUE_PROPERTIES for arg in ("--property", "=".join(prop))]
        result = run_loop(name, "produce loop", cmd, work)
        broker_cpu = cpu_seconds(broker.proc.pid)
    finally:
        sim.stop()
        broker.stop()
    return {
        "events": result["delivered"],
        "wall": result["seconds"],
        "eps": result["messages_per_second"],
        "cpu_per_m": result["cpu_seconds"] / result["delivered"] * 1e6 if result["delivered"] else float("nan"),
        "notes": f"{result['mean_bytes']} bytes per message on average (envelopes of the simulator's first"
        f" 1,000 records, not enriched), {result['failed']} failed; broker CPU {broker_cpu:.1f} s",
    }


def run_backfill(base, sink):
    name = f"backfill → {sink}"
    work = new_workdir(base, f"backfill-{sink}")
    broker = Broker(name, work) if sink == "kafka" else None
    sim = Simulator(name, work, backlog_flags())
    daemon = None
    try:
        # Rotation keeps the disk use of a 1M-event run near 0.5 GiB.
        file_extra = "max_bytes = 268435456\nmax_files = 1\n"
        # The rate budget far above what any run needs: the benchmark
        # measures the pipeline, not Asana's 1500/min.
        source_extra = 'start_at = "7d"\npoll_interval = "1s"\nrequests_per_minute = 100000000\n'
        config, port, sink_id = daemon_config(work, sim, broker, source_extra, file_extra)
        daemon = Daemon(name, work, config, port, sink_id)
        acked, done_at, stored_at = daemon.wait_for_backlog(name, work, EVENTS, BACKFILL_TIMEOUT)
        end = done_at or time.time()
        cpu, rss, sim_cpu = daemon.cpu(), daemon.rss(), sim.cpu()
        threads = threads_cpu(daemon.proc.pid)
        stats = sim.stats()
        daemon.stop()
        wall = end - daemon.started
        notes = [
            f"daemon CPU {cpu:.1f} s ({threads}), simulator CPU {sim_cpu:.1f} s",
            f"source stored everything after {fmt((stored_at or end) - daemon.started, '.1f')} s, "
            f"sink acknowledged it after {wall:.1f} s",
            f"{stats['by_endpoint'].get('audit_log_events', {}).get('200', 0)} pages, "
            f"{stats['by_endpoint'].get('users', {}).get('200', 0)} user lookups",
        ]
        if broker:
            notes.append(f"broker CPU {cpu_seconds(broker.proc.pid):.1f} s")
            try:
                count, distinct = broker.read_back(int(acked))
                notes.append(f"read back {count} messages, {distinct} distinct keys")
            except Exception as e:
                notes.append(f"reading the topic back failed: {e}")
        else:
            lines = count_lines(os.path.join(work, "out/events.jsonl"))
            notes.append(f"{lines} lines in the kept files (rotation keeps the newest 2 × 256 MiB)")
        if done_at is None:
            notes.append(f"TIMED OUT after {BACKFILL_TIMEOUT:.0f}s")
        return backlog_row(acked, wall, cpu, rss, done_at, notes)
    finally:
        if daemon:
            daemon.stop()
        sim.stop()
        if broker:
            broker.stop()


def delivered_ids(work):
    """Event ids in the file sink's output (every kept file): (lines, set)."""
    lines, ids = 0, set()
    out = os.path.join(work, "out")
    for name in sorted(os.listdir(out)):
        with open(os.path.join(out, name), "rb") as f:
            for line in f:
                if line.strip():
                    lines += 1
                    ids.add(json.loads(line)["id"])
    return lines, ids


def run_rate_limited(base, parallel):
    """A backlog read within Asana's limits (1,500 requests/min, pages of
    100, SLICE_LATENCY per request) while live events keep arriving: with
    parallel time slices (the default) or as one stream (parallel_slices =
    1, on 1/20 of the backlog: one stream is ~10× slower). Checks nothing
    was lost or repeated against the simulator's own list of events."""
    events = SLICE_EVENTS if parallel else max(SLICE_EVENTS // 20, 500)
    name = "rate limit: parallel slices" if parallel else "rate limit: one stream"
    work = new_workdir(base, "slices" if parallel else "serial")
    live_rate = 2
    flags = [
        "--events", str(events), "--backlog-span", "30d",
        "--rate", str(live_rate), "--latency", SLICE_LATENCY,
    ]
    sim = Simulator(name, work, flags, rate_limit=ASANA_RPM)
    daemon = None
    try:
        # Asana's defaults: page_size 100, requests_per_minute 1500,
        # parallel_slices 16, enrichment on (its lookups share the budget).
        source_extra = 'start_at = "31d"\npoll_interval = "1s"\n'
        if not parallel:
            source_extra += "parallel_slices = 1\n"
        # No rotation loses anything: every line is checked.
        file_extra = "max_bytes = 1073741824\nmax_files = 8\n"
        config, port, sink_id = daemon_config(work, sim, None, source_extra, file_extra)
        daemon = Daemon(name, work, config, port, sink_id)
        pages = events / ASANA_PAGE
        timeout = 120 + (pages / (ASANA_RPM / 60) * 2 if parallel else pages * 2)
        deadline = daemon.started + timeout
        done_at, slices_seen, acked = None, 0, 0
        last_report = time.monotonic()
        while time.time() < deadline:
            if not daemon.alive():
                raise RuntimeError(f"daemon exited early ({daemon.proc.returncode}); see {work}/daemon.log")
            text = daemon.metrics()
            acked = daemon.acknowledged(text) or 0
            slices = daemon.metric("auditrelay_source_backfill_slices", 'source="bench"', text)
            slices_seen = max(slices_seen, slices or 0)
            # One stream reads the backlog before any live event; slices
            # are done when none is left.
            if acked >= events and (not parallel or (slices_seen > 0 and slices == 0)):
                done_at = time.time()
                break
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                log(f"{name}: {acked:.0f} / {events} acknowledged, {slices} slices left")
            time.sleep(0.1)
        end = done_at or time.time()
        wall = end - daemon.started
        # Then everything the simulator shows must arrive, once.
        expected = set(json.loads(http_get(sim.admin + "/events", timeout=60))["gids"])
        settle = time.time() + 30
        while time.time() < settle and (daemon.acknowledged() or 0) < len(expected):
            time.sleep(0.2)
        cpu, rss = daemon.cpu(), daemon.rss()
        stats = sim.stats()
        daemon.stop()
        lines, got = delivered_ids(work)
        missing = len(expected - got)
        requests = stats["by_endpoint"].get("audit_log_events", {})
        limited = stats["by_status"].get("429", 0)
        eps = events / wall if wall > 0 else 0
        notes = [
            f"{events:,} backlog events over 30 d, {live_rate} live events/s meanwhile, "
            f"latency {SLICE_LATENCY}, limit {ASANA_RPM}/min, pages of {ASANA_PAGE}",
            f"{sum(requests.values())} audit requests ({requests.get('200', 0)} answered 200), "
            f"{stats['by_endpoint'].get('users', {}).get('200', 0)} user lookups, "
            f"{limited} answered 429, peak {stats.get('peak_in_flight', '?')} in flight",
            f"{lines:,} lines, {len(got):,} distinct ids; {missing} of the simulator's "
            f"{len(expected):,} events missing, {lines - len(got)} repeated",
            f"daemon CPU {cpu:.1f} s, peak RSS {rss:.1f} MiB",
        ]
        if done_at is None:
            notes.append(f"TIMED OUT after {timeout:.0f}s")
        return {
            "events": events,
            "wall": wall,
            "eps": eps,
            "share": eps / RATE_LIMIT_BOUND_EPS,
            "rss": rss,
            "cpu_per_m": cpu / events * 1e6,
            "complete": done_at is not None,
            "lost": missing,
            "repeated": lines - len(got),
            "limited": limited,
            "notes": "; ".join(notes),
        }
    finally:
        if daemon:
            daemon.stop()
        sim.stop()


def run_anaplan_backfill(base, parallel_pages):
    """The daemon reads an Anaplan backlog of ANAPLAN_EVENTS through
    ANAPLAN_LATENCY per request into a file, with `parallel_pages` (None:
    the daemon's default, not set in the config)."""
    setting = "default" if parallel_pages is None else str(parallel_pages)
    name = f"anaplan backfill → file, parallel_pages={setting}"
    work = new_workdir(base, f"anaplan-backfill-{setting}")
    # The backlog ends two hours ago: every event, late-stored ones too, is
    # visible from the start, so the count to wait for is exact.
    epoch = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    epoch_text = epoch.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sim = Simulator(
        name,
        work,
        [
            "--events", "0", "--rate", "0", "--max-live", "0",
            "--epoch", epoch_text,
            "--anaplan-listen", "127.0.0.1:0",
            "--anaplan-events", str(ANAPLAN_EVENTS),
            "--anaplan-rate", "0",
            "--anaplan-latency", ANAPLAN_LATENCY,
            # Far above what any run needs: the rows compare paging, not
            # Anaplan's (unpublished) limit.
            "--anaplan-rate-limit", "1000000000",
        ],
        anaplan=True,
    )
    daemon = None
    try:
        file_extra = "max_bytes = 268435456\nmax_files = 1\n"
        # poll_interval: the window re-read after the backlog (the overlap)
        # starts after the measurement. The budget far above the requests:
        # at its default (600/min) it would cap both rows at 10 pages/s.
        source_extra = 'start_at = "7d"\npoll_interval = "60s"\nrequests_per_minute = 100000000\n'
        if parallel_pages is not None:
            source_extra += f"parallel_pages = {parallel_pages}\n"
        config, port, sink_id = daemon_config(
            work, sim, None, source_extra, file_extra, source_table=anaplan_source(sim)
        )
        daemon = Daemon(name, work, config, port, sink_id)
        acked, done_at, stored_at = daemon.wait_for_backlog(name, work, ANAPLAN_EVENTS, ANAPLAN_TIMEOUT)
        end = done_at or time.time()
        cpu, rss = daemon.cpu(), daemon.rss()
        stats = sim.anaplan_stats()
        daemon.stop()
        wall = end - daemon.started
        events = stats["by_endpoint"].get("audit_events", {})
        notes = [
            f"{ANAPLAN_EVENTS} events, {ANAPLAN_PAGE_SIZE} per page, {ANAPLAN_LATENCY} per request"
            + (", parallel_pages not set (the daemon's default)" if parallel_pages is None else ""),
            f"source stored everything after {fmt((stored_at or end) - daemon.started, '.1f')} s, "
            f"sink acknowledged it after {wall:.1f} s",
            f"{events.get('200', 0)} pages, most requests at once {stats['max_concurrent_event_requests']}, "
            f"{stats['by_endpoint'].get('users_list', {}).get('200', 0)} user list pages and "
            f"{sum(stats['by_endpoint'].get('users_get', {}).values())} user lookups",
            f"daemon CPU {cpu:.1f} s",
        ]
        if done_at is None:
            notes.append(f"TIMED OUT after {ANAPLAN_TIMEOUT:.0f}s")
        return backlog_row(acked, wall, cpu, rss, done_at, notes)
    finally:
        if daemon:
            daemon.stop()
        sim.stop()


def run_anaplan(base):
    """One page at a time, then the default: two rows, the second with its
    speed-up over the first."""
    rows = []
    for parallel_pages in (1, None):
        name = f"anaplan backfill → file, parallel_pages={'default' if parallel_pages is None else parallel_pages}"
        log(f"{name}: starting")
        try:
            result = run_anaplan_backfill(base, parallel_pages)
            log(f"{name}: {result}")
        except Exception as e:
            log(f"{name}: failed: {e}\n{traceback.format_exc()}")
            result = {"error": str(e).splitlines()[0][:200]}
        rows.append((name, result))
    (_, serial), (_, parallel) = rows
    if serial.get("complete") and parallel.get("complete") and serial["eps"] > 0:
        parallel["speedup"] = parallel["eps"] / serial["eps"]
    return rows


class FileTail:
    """Reads the file sink's output as it grows: each complete line gets the
    wall-clock time of the poll that first saw it."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.seen = []  # (seen_at unix s, event time unix s)

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        now = time.time()
        if not data:
            return
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if line:
                self.seen.append((now, event_time(json.loads(line)["time"])))


class KafkaTail:
    """Consumes the topic from the start of every partition (no group, so no
    rebalance delay); each message gets the time the consumer returned it."""

    def __init__(self, address):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": address,
                "group.id": "bench-lag",
                "enable.auto.commit": False,
                # Ask often: these waits bound how late a message is seen.
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
                "fetch.queue.backoff.ms": 1,
                "fetch.error.backoff.ms": 50,
            }
        )
        self.consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(KAFKA_PARTITIONS)])
        self.seen = []

    def poll(self):
        messages = self.consumer.consume(num_messages=10000, timeout=0.005)
        now = time.time()
        for message in messages:
            if message.error():
                continue
            self.seen.append((now, event_time(json.loads(message.value())["time"])))

    def close(self):
        self.consumer.close()


def event_time(text):
    # The envelope's `time`: RFC 3339 UTC with milliseconds ("...Z").
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values, p):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run_live(base, sink):
    name = f"live tail → {sink}"
    work = new_workdir(base, f"live-{sink}")
    count = int(LIVE_RATE * LIVE_SECONDS)
    broker = Broker(name, work) if sink == "kafka" else None
    # Live events start at the epoch, a few seconds ahead, so that the
    # daemon (and the consumer) are up before the first one exists.
    lead = 5.0
    epoch = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lead)
    epoch_text = epoch.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sim = Simulator(
        name,
        work,
        ["--events", "0", "--epoch", epoch_text, "--rate", f"{LIVE_RATE:g}", "--max-live", str(count)],
    )
    daemon = tail = None
    try:
        source_extra = f'start_at = "1h"\npoll_interval = "{POLL_INTERVAL}"\n'
        config, port, sink_id = daemon_config(work, sim, broker, source_extra, "max_bytes = 4294967296\n")
        daemon = Daemon(name, work, config, port, sink_id)
        tail = KafkaTail(broker.address) if broker else FileTail(os.path.join(work, "out/events.jsonl"))
        epoch_s = epoch.timestamp()
        cpu_at_epoch = None
        deadline = epoch_s + LIVE_SECONDS + LIVE_DRAIN_TIMEOUT
        next_check = 0.0
        while time.time() < deadline:
            if cpu_at_epoch is None and time.time() >= epoch_s:
                cpu_at_epoch = daemon.cpu()
            tail.poll()
            if len(tail.seen) >= count:
                break
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1
                if not daemon.alive():
                    raise RuntimeError(f"daemon exited early ({daemon.proc.returncode}); see {work}/daemon.log")
            if sink == "file":
                # 2 ms between reads: the file tail's resolution.
                time.sleep(0.002)
        complete = len(tail.seen) >= count
        last_seen = max((s for s, _ in tail.seen), default=time.time())
        cpu, rss = daemon.cpu(), daemon.rss()
        acked = daemon.acknowledged() or 0
        daemon.stop()
        counted = [(s - t) * 1000 for s, t in tail.seen if t >= epoch_s + LIVE_WARMUP]
        wall = last_seen - epoch_s
        delivered = len(tail.seen)
        notes = [
            f"{LIVE_RATE:g} ev/s for {LIVE_SECONDS:g} s, poll_interval {POLL_INTERVAL}",
            f"lag over {len(counted)} events (first {LIVE_WARMUP:g} s excluded), max {max(counted, default=float('nan')):.0f} ms",
            f"daemon CPU {cpu - (cpu_at_epoch or 0):.2f} s while live",
            f"daemon acknowledged {acked:.0f}",
        ]
        if not complete:
            notes.append(f"INCOMPLETE: saw {delivered} of {count}")
        return {
            "events": delivered,
            "wall": wall,
            "eps": delivered / wall if wall > 0 else 0,
            "cpu_per_m": (cpu - (cpu_at_epoch or 0)) / delivered * 1e6 if delivered else float("nan"),
            "rss": rss,
            "p50": percentile(counted, 50),
            "p99": percentile(counted, 99),
            "complete": complete,
            "notes": "; ".join(notes),
        }
    finally:
        if isinstance(tail, KafkaTail):
            tail.close()
        if daemon:
            daemon.stop()
        sim.stop()
        if broker:
            broker.stop()


# ------------------------------------------------------------------ output


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
    except Exception as e:
        return f"unavailable ({e})"


def machine(work):
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
    commit = sh(["git", "rev-parse", "HEAD"])
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
    fs = sh(["df", "--output=fstype,target", work]).splitlines()[-1:]
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")),
        ("cpus (nproc)", str(os.cpu_count())),
        ("cpu model", model),
        ("memory", f"{mem_kib / 1024 / 1024:.1f} GiB"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("rustc", sh(["rustc", "--version"])),
        ("git commit", commit + (" (with uncommitted changes)" if dirty else "")),
        ("binary", BIN),
        ("tansu", sh([TANSU, "--version"]) if TANSU else "not installed"),
        ("python", f"{sys.executable} {platform.python_version()}"),
        ("work directory", f"{work} ({' '.join(fs[0].split()) if fs else '?'})"),
    ]


def fmt(value, spec):
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return format(value, spec)


def mark(ok):
    return "✓" if ok else "✗"


def table(results, baseline_eps):
    poll_target = POLL_MS + TARGET_LAG_SLACK_MS
    head = [
        "scenario", "events", "wall s", "events/s", "CPU s / 1M ev", "peak RSS MiB",
        "lag p50 / p99 ms", "vs bare fetch", "target", "met",
    ]
    rows = []
    for name, r in results:
        if "error" in r:
            rows.append([name] + ["–"] * 7 + ["", f"✗ failed: {r['error']}"])
            continue
        ratio = r["eps"] / baseline_eps if baseline_eps and name.startswith("backfill") else None
        target, checks = "", []
        if name == "bare fetch loop":
            target = "baseline"
        elif name.startswith("bare producer"):
            target = "Kafka's ceiling here (not a target)"
        elif name.startswith("rate limit"):
            bound = RATE_LIMIT_BOUND_EPS
            if name.endswith("slices"):
                target = f"≥{TARGET_SLICES_SHARE:.0%} of {bound:,.0f} ev/s; 0 lost, 0 repeated"
                checks = [f"{mark(r['share'] >= TARGET_SLICES_SHARE)} {r['share']:.0%} of bound"]
            else:
                target = "the one-stream baseline"
                checks = [f"{r['share']:.0%} of bound"]
            checks.append(f"{mark(r['lost'] == 0 and r['repeated'] == 0)} {r['lost']} lost, {r['repeated']} repeated")
            checks.append(f"{r['limited']} × 429")
        elif name.startswith("anaplan"):
            if "speedup" in r:
                target = "speed-up over parallel_pages=1"
                checks = [f"{r['speedup']:.2f}×"]
            if not r.get("complete", True):
                checks.append("✗ incomplete")
        elif name.startswith("backfill"):
            kafka = name.endswith("kafka")
            eps_t = TARGET_KAFKA_EPS if kafka else TARGET_FILE_EPS
            rss_t = TARGET_RSS_KAFKA if kafka else TARGET_RSS_FILE
            target = f"≥{eps_t:,} ev/s, ≥{TARGET_RATIO}× fetch, ≤{rss_t} MiB (at 1M)"
            checks = [
                f"{mark(r['eps'] >= eps_t)} ev/s",
                f"{mark(ratio is not None and ratio >= TARGET_RATIO)} ratio",
                f"{mark(r['rss'] <= rss_t)} RSS",
            ]
            if not r.get("complete", True):
                checks.append("✗ incomplete")
        else:
            target = f"p99 ≤ {poll_target:.0f} ms (poll {POLL_INTERVAL} + {TARGET_LAG_SLACK_MS} ms)"
            checks = [f"{mark(r['p99'] <= poll_target)} p99"]
            if not r.get("complete", True):
                checks.append("✗ incomplete")
        lag = (
            f"{fmt(r['p50'], '.0f')} / {fmt(r['p99'], '.0f')}" if "p99" in r else "–"
        )
        rows.append(
            [
                name,
                f"{r['events']:,}",
                fmt(r["wall"], ".1f"),
                fmt(r["eps"], ",.0f"),
                fmt(r.get("cpu_per_m"), ".1f"),
                fmt(r.get("rss"), ".1f"),
                lag,
                fmt(ratio, ".2f") if ratio is not None else "–",
                target,
                ", ".join(checks) if checks else "–",
            ]
        )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    unknown = [s for s in SCENARIOS if s not in ALL_SCENARIOS]
    if unknown:
        raise SystemExit(f"BENCH_SCENARIOS: unknown {unknown}; choose from {ALL_SCENARIOS}")
    base = os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="auditrelay-bench-")
    os.makedirs(base, exist_ok=True)
    try:
        return run_all(base)
    finally:
        # Also after a signal: the processes are stopped first (on_signal).
        stop_all()
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {base}")
        elif not os.environ.get("BENCH_DIR"):
            shutil.rmtree(base, ignore_errors=True)


def needs_kafka(scenario):
    return "kafka" in scenario or scenario == "produce"


def run_all(base):
    info = machine(base)
    kafka_ok = True
    if any(needs_kafka(s) for s in SCENARIOS):
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            kafka_ok = False
            log("confluent-kafka is missing: the Kafka rows are skipped")
        if not TANSU:
            kafka_ok = False
            log("tansu is missing: the Kafka rows are skipped")

    results = []
    runs = {
        "fetch": ("bare fetch loop", run_fetch),
        "produce": ("bare producer → kafka", run_produce),
        "backfill-file": ("backfill → file", lambda b: run_backfill(b, "file")),
        "backfill-kafka": ("backfill → kafka", lambda b: run_backfill(b, "kafka")),
        "live-file": ("live tail → file", lambda b: run_live(b, "file")),
        "live-kafka": ("live tail → kafka", lambda b: run_live(b, "kafka")),
        "slices": ("rate limit: parallel slices", lambda b: run_rate_limited(b, True)),
        "serial": ("rate limit: one stream", lambda b: run_rate_limited(b, False)),
        "anaplan-backfill": ("anaplan backfill", run_anaplan),
    }
    try:
        for key in ALL_SCENARIOS:
            if key not in SCENARIOS:
                continue
            name, fn = runs[key]
            if needs_kafka(key) and not kafka_ok:
                results.append((name, {"error": "skipped: tansu or confluent-kafka missing"}))
                continue
            log(f"{name}: starting")
            try:
                result = fn(base)
                log(f"{name}: {result}")
            except Exception as e:
                log(f"{name}: failed: {e}\n{traceback.format_exc()}")
                result = {"error": str(e).splitlines()[0][:200]}
            # A scenario of several rows returns them as (name, result) pairs.
            results.extend(result if isinstance(result, list) else [(name, result)])
    finally:
        stop_all()

    baseline = next((r["eps"] for n, r in results if n == "bare fetch loop" and "eps" in r), None)
    out = []
    out.append("## Machine\n")
    out += [f"- {k}: {v}" for k, v in info]
    out.append("\n## Commands\n")
    out.append("Built with: `" + os.environ.get("BENCH_BUILD_COMMAND", "?") + "`")
    out.append(
        f"Settings: BENCH_EVENTS={EVENTS} BENCH_LIVE_SECONDS={LIVE_SECONDS:g} "
        f"BENCH_LIVE_RATE={LIVE_RATE:g} BENCH_LIVE_WARMUP={LIVE_WARMUP:g} "
        f"BENCH_POLL_INTERVAL={POLL_INTERVAL} BENCH_ANAPLAN_EVENTS={ANAPLAN_EVENTS} "
        f"BENCH_ANAPLAN_LATENCY={ANAPLAN_LATENCY} BENCH_QUICK={int(QUICK)}\n"
    )
    current = None
    for scenario, text in COMMANDS:
        if scenario != current:
            if current is not None:
                out.append("```\n")
            out += [f"### {scenario}\n", "```sh"]
            current = scenario
        out.append(text)
    if current is not None:
        out.append("```")
    out.append("\n## Results\n")
    out.append(table(results, baseline))
    out.append("")
    out.append(
        "events/s: events acknowledged by the sink / (time of the first /metrics poll showing all of them"
        " acknowledged − daemon start); live rows: events / (last seen − first event's visibility)."
    )
    out.append(
        "CPU: utime+stime of the daemon from /proc/PID/stat just before SIGTERM (live rows: since the first"
        " live event; the two loops: their own CPU, the fetch loop's from getrusage after it exits);"
        " peak RSS: VmHWM from /proc/PID/status just before SIGTERM."
    )
    out.append(
        "lag: when the event reached the sink − its created_at (the simulator serves an event from its"
        " created_at on, and its clock is the real clock). File: the time a 2 ms tail of the output file"
        " first read the line (readable after write(), at most one fsync before the acknowledgement)."
        " Kafka: the time an independent consumer (confluent-kafka, fetch.wait.max.ms=10, every"
        " partition) returned the message. Live events of the first BENCH_LIVE_WARMUP seconds are left out."
    )
    by_name = dict(results)
    sliced, serial = by_name.get("rate limit: parallel slices"), by_name.get("rate limit: one stream")
    if sliced and serial and sliced.get("eps") and serial.get("eps"):
        out.append(
            f"Parallel slices drained the backlog {sliced['eps'] / serial['eps']:.1f}× as fast as one stream"
            f" ({sliced['eps']:,.0f} vs {serial['eps']:,.0f} events/s; bound"
            f" {RATE_LIMIT_BOUND_EPS:,.0f} = {ASANA_RPM}/min × {ASANA_PAGE} per page / 60)."
        )
    speedup = next((r["speedup"] for n, r in results if "speedup" in r), None)
    if speedup is not None:
        out.append(
            f"anaplan backfill: parallel_pages default is {speedup:.2f}× as fast as parallel_pages=1"
            f" ({ANAPLAN_EVENTS:,} events, {ANAPLAN_LATENCY} per request)."
        )
    out.append("")
    for name, r in results:
        if r.get("notes"):
            out.append(f"- {name}: {r['notes']}")
    print("\n".join(out))
    return 0


def on_signal(signum, _frame):
    log(f"signal {signum}: stopping")
    stop_all()
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.exit(main())
