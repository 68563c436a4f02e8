"""Benchmark: `lease --version` start-up time (median of 50 runs) and the size of both
binaries. Usage: startup.py BIN_DIR OUT.json"""
import json
import os
import statistics
import subprocess
import sys
import time

RUNS = 50


def main():
    bin_dir, out_file = sys.argv[1], sys.argv[2]
    lease = os.path.join(bin_dir, "lease")
    subprocess.run([lease, "--version"], check=True, capture_output=True)  # warm the page cache
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([lease, "--version"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    figures = {
        "lease_version_median_ms": statistics.median(times) * 1000,
        "lease_version_min_ms": min(times) * 1000,
        "runs": RUNS,
        "lease_bytes": os.path.getsize(lease),
        "leased_bytes": os.path.getsize(os.path.join(bin_dir, "leased")),
    }
    print(json.dumps(figures))
    with open(out_file, "w") as f:
        json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
