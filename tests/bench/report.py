"""Collects the benchmark figures (one JSON file per benchmark in RAW_DIR) into one
table (markdown, on stdout) and one file (OUT.json). A benchmark that did not run is
listed as such. Usage: report.py RAW_DIR OUT.json"""
import datetime
import json
import os
import platform
import sys


def load(raw, name):
    path = os.path.join(raw, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def verdict(ok):
    return "met" if ok else "MISSED"


def emulator_alone(r):
    """The emulator's own time for the query (older runs timed it through boto3)."""
    for key in ("emulator alone (raw request)", "emulator floor (in-process boto3)"):
        if key in r:
            return r[key]["median_s"]
    return float("nan")


def rows(raw):
    spot = load(raw, "spot_notice")
    if spot:
        yield ("1. spot notice → SpotInterruption at a subscriber",
               f"p50 {spot['event_p50_ms']:.0f} ms, p99 {spot['event_p99_ms']:.0f} ms ({spot['trials']} trials)",
               "—", "p99 ≤ 1500 ms", verdict(spot["event_p99_ms"] <= 1500))
        yield ("1. spot notice → task message visible again",
               f"p50 {spot['requeue_p50_ms']:.0f} ms, p99 {spot['requeue_p99_ms']:.0f} ms",
               "—", "p99 ≤ 1500 ms", verdict(spot["requeue_p99_ms"] <= 1500))
    else:
        yield ("1. spot notice → event / requeue", "not run", "", "", "")
    d = load(raw, "deadline_to_terminate")
    if d:
        yield ("2. deadline → TerminateInstances call",
               f"p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms ({d['trials']} trials)",
               "—", "p99 ≤ 1000 ms", verdict(d["p99_ms"] <= 1000))
    else:
        yield ("2. deadline → terminate", "not run", "", "", "")
    f = load(raw, "idle_footprint")
    if f:
        parts = ""
        if "rss_file_kb" in f:
            parts = (f" ({f['rss_file_kb'] / 1000:.1f} MB program and libraries, "
                     f"{f['rss_anon_kb'] / 1000:.1f} MB heap and stacks)")
        yield ("3. idle agent, 60 s, 1 s spot polling",
               f"RSS {f['max_rss_kb'] / 1000:.1f} MB max{parts}, CPU {f['cpu_percent_of_core']:.3f} % "
               f"of a core, {f['token_puts_in_window']} token PUTs in the window",
               "—", "≤ 10 MB, ≤ 0.5 %",
               verdict(f["max_rss_kb"] <= 10_000 and f["cpu_percent_of_core"] <= 0.5))
    else:
        yield ("3. idle footprint", "not run", "", "", "")
    lst = load(raw, "list_1000")
    if lst:
        r = lst["list_1000"]
        yield ("4. `lease list`, 1,000 instances",
               f"{r['lease list']['median_s']:.2f} s (median of {r['lease list']['trials']})",
               f"aws ec2 describe-instances {r['aws ec2 describe-instances']['median_s']:.2f} s; "
               f"emulator alone {emulator_alone(r):.2f} s",
               "≤ 0.5× aws", f"{lst['ratio']:.2f}× — " + verdict(lst["ratio"] <= 0.5))
    else:
        yield ("4. lease list", "not run", "", "", "")
    up = load(raw, "bundle_upload")
    if up:
        u = up["upload_bundle"]
        lease_r, aws_r = u["results"]["leased uploader"], u["results"]["aws s3 cp --recursive"]
        floor = u["results"].get("emulator floor (in-process boto3)")
        cpu = lambda r: f", {r['client_cpu_s']:.1f} s CPU" if "client_cpu_s" in r else ""
        ref = (f"aws s3 cp --recursive {aws_r['mb_per_s']:.0f} MB/s "
               f"({aws_r['median_s']:.1f} s{cpu(aws_r)})")
        if floor:
            ref += f"; boto3 in-process {floor['median_s']:.1f} s"
        if "emulator_cpu_percent_of_core" in lease_r:
            ref += (f"; emulator busy {lease_r['emulator_cpu_percent_of_core']:.0f} % / "
                    f"{aws_r['emulator_cpu_percent_of_core']:.0f} % of a core")
        yield ("5. bundle upload, 200 files + 512 MiB",
               f"{lease_r['mb_per_s']:.0f} MB/s ({lease_r['median_s']:.1f} s{cpu(lease_r)}, "
               f"{u['profile']} build)",
               ref, "≥ 1.5× aws", f"{u['ratio']:.2f}× — " + verdict(u["ratio"] >= 1.5))
    else:
        yield ("5. bundle upload", "not run", "", "", "")
    m = load(raw, "mock_tasks")
    if m:
        yield ("6. mock tasks through one agent (a stream, ≤ 100 queued)",
               f"{m['tasks_per_s']:.1f} tasks/s ({m['tasks']} tasks in {m['elapsed_s']:.1f} s); "
               f"{m['emulator_calls_per_task']:.1f} AWS calls and "
               f"{m['agent_cpu_ms_per_task']:.1f} ms of agent CPU a task",
               f"emulator busy {m['emulator_cpu_percent_of_core']:.0f} % of a core",
               "≥ 20/s", verdict(m["tasks_per_s"] >= 20))
    else:
        yield ("6. mock tasks", "not run", "", "", "")
    b = load(raw, "mock_tasks_burst")
    if b:
        yield (f"6. mock tasks, all {b['tasks']} queued at once",
               f"{b['tasks_per_s']:.1f} tasks/s ({b['elapsed_s']:.1f} s)",
               f"emulator busy {b['emulator_cpu_percent_of_core']:.0f} % of a core",
               "≥ 20/s", verdict(b["tasks_per_s"] >= 20))
    s = load(raw, "startup")
    if s:
        yield ("7. `lease --version`; binary sizes",
               f"{s['lease_version_median_ms']:.1f} ms; lease {s['lease_bytes'] / 1e6:.1f} MB, "
               f"leased {s['leased_bytes'] / 1e6:.1f} MB", "—", "—", "")
    else:
        yield ("7. start-up and sizes", "not run", "", "", "")


def main():
    raw, out_file = sys.argv[1], sys.argv[2]
    table = list(rows(raw))
    print(f"Benchmarks, {datetime.date.today()}, {platform.machine()}, "
          f"{os.cpu_count()} cores, against moto's server on 127.0.0.1 (`tests/bench/run`)\n")
    print("| benchmark | lease | reference | target | result |")
    print("| --- | --- | --- | --- | --- |")
    for r in table:
        print("| " + " | ".join(r) + " |")
    figures = {}
    for name in sorted(os.listdir(raw)):
        if name.endswith(".json"):
            with open(os.path.join(raw, name)) as f:
                figures[name[:-5]] = json.load(f)
    with open(out_file, "w") as f:
        json.dump({"date": str(datetime.date.today()), "figures": figures,
                   "table": [dict(zip(["benchmark", "lease", "reference", "target", "result"], r))
                             for r in table]}, f, indent=2)


if __name__ == "__main__":
    main()
