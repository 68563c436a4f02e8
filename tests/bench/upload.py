"""Benchmark: the agent's bundle upload vs `aws s3 cp --recursive`, side by side against
the same moto server, on the same files: 200 files of 4-64 KiB and one of 512 MiB.

    python tests/bench/upload.py BIN_DIR MOTO_SERVER OUT.json [--trials N]

Run it with a Python that has boto3 and `aws` (the CLI) on PATH, e.g. the virtual
environment moto is installed in. The uploader runs as BIN_DIR/bench-upload
(tests/src/bin/bench-upload.rs, built with the agent in tests/bench/run's `dist`
profile); its figure is the time of `upload_bundle` alone, measured in-process, and
the process's wall time is kept beside it. The CLI's figure is its process's wall time
(it has no other), with its default transfer settings. Each trial uses a fresh prefix, and the emulator's objects
are deleted after each, so no trial pays for another's memory. Prints a table and
writes every figure to OUT.json. An in-process boto3 run of the same requests shows the
emulator's own floor beside both.
"""
import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import boto3

SMALL_FILES = 200
BIG_FILE = 512 << 20
BUCKET = "lease-bench"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    """User + system CPU seconds a process has used (USER_HZ = 100)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def client_cpu(tool):
    """CPU seconds of the client so far: our children (aws, bench-upload), or this
    process itself for the in-process floor."""
    who = resource.RUSAGE_SELF if tool == "floor" else resource.RUSAGE_CHILDREN
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def make_tree(root):
    """The bundle: small files in ten folders, sizes 4-64 KiB, and one 512 MiB file."""
    rng = random.Random(7)
    total = 0
    for i in range(SMALL_FILES):
        size = rng.randint(4 << 10, 64 << 10)
        path = os.path.join(root, "small", f"{i % 10:02}", f"f{i:03}.dat")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
        total += size
    with open(os.path.join(root, "big.bin"), "wb") as f:
        for _ in range(BIG_FILE // (16 << 20)):
            f.write(os.urandom(16 << 20))
    return SMALL_FILES + 1, total + BIG_FILE


def empty_prefix(s3, prefix):
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix) for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    return len(keys)


def floor_upload(s3, tree, prefix, threads=8, part=16 << 20):
    """The emulator's floor for the same requests: every file through one in-process
    boto3 client and a pool of `threads`, the big file in `part`-sized parts, no
    checksums, no manifest. Neither client can beat the emulator's own cost by much."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs]
    big = [p for p in paths if os.path.getsize(p) > part]
    small = [p for p in paths if p not in big]

    def put(p):
        with open(p, "rb") as f:
            s3.put_object(Bucket=BUCKET, Key=prefix + os.path.relpath(p, tree), Body=f.read())

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        uploads = []
        for p in big:
            key = prefix + os.path.relpath(p, tree)
            uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
            n = -(-os.path.getsize(p) // part)

            def send(i, p=p, key=key, uid=uid):
                with open(p, "rb") as f:
                    f.seek(i * part)
                    body = f.read(part)
                r = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=i + 1,
                                   Body=body)
                return {"PartNumber": i + 1, "ETag": r["ETag"]}

            uploads.append((key, uid, [pool.submit(send, i) for i in range(n)]))
        for f in [pool.submit(put, p) for p in small]:
            f.result()
        for key, uid, parts in uploads:
            s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid,
                                         MultipartUpload={"Parts": [f.result() for f in parts]})
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("moto_server")
    ap.add_argument("out")
    ap.add_argument("--trials", type=int, default=int(os.environ.get("LEASE_BENCH_TRIALS", "3")))
    args = ap.parse_args()

    bench_upload = os.path.join(args.bin_dir, "bench-upload")
    profile = os.path.basename(os.path.normpath(args.bin_dir))
    aws_version = subprocess.run(["aws", "--version"], capture_output=True, text=True)
    aws_version = (aws_version.stdout or aws_version.stderr).strip()

    work = tempfile.mkdtemp(prefix="lease-bench-upload-")
    port = free_port()
    moto = subprocess.Popen([args.moto_server, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tree = os.path.join(work, "bundle")
        files, size = make_tree(tree)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                   AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
        env.pop("AWS_PROFILE", None)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket=BUCKET)

        aws_runs, lease_runs, lease_wall, peak_rss, floor_runs = [], [], [], [], []
        # CPU seconds each spends, and the emulator's share of the wall time meanwhile:
        # a client at the emulator's ceiling shows here what it would do with a faster one.
        cpu = {"aws": [], "lease": [], "floor": []}
        busy = {"aws": [], "lease": [], "floor": []}
        for trial in range(args.trials):
            # aws first in even trials, second in odd ones: neither always meets a
            # freshly started (or a tired) emulator.
            order = ["aws", "lease"] if trial % 2 == 0 else ["lease", "aws"]
            for tool in order + ["floor"]:
                before = (time.perf_counter(), cpu_seconds(moto.pid), client_cpu(tool))
                if tool == "floor":
                    prefix = f"floor-{trial}/"
                    floor_runs.append(floor_upload(s3, tree, prefix))
                    listed = empty_prefix(s3, prefix)
                    assert listed == files, f"the floor run uploaded {listed} of {files} files"
                elif tool == "aws":
                    prefix = f"aws-{trial}/"
                    start = time.perf_counter()
                    subprocess.run(["aws", "s3", "cp", "--recursive", "--only-show-errors",
                                    tree, f"s3://{BUCKET}/{prefix}"], env=env, check=True)
                    aws_runs.append(time.perf_counter() - start)
                    listed = empty_prefix(s3, prefix)
                    assert listed == files, f"aws uploaded {listed} of {files} files"
                else:
                    prefix = f"lease-{trial}/"
                    out = os.path.join(work, f"lease-{trial}.json")
                    start = time.perf_counter()
                    subprocess.run([bench_upload, tree, BUCKET, prefix, out], env=env, check=True)
                    lease_wall.append(time.perf_counter() - start)
                    with open(out) as f:
                        figures = json.load(f)
                    assert figures["files"] == files, figures
                    lease_runs.append(figures["seconds"])
                    concurrency = figures["concurrency"]
                    peak_rss.append(figures["peak_rss_kib"] // 1024)
                    listed = empty_prefix(s3, prefix)
                    assert listed == files + 1, f"the uploader left {listed} objects, not {files} + manifest"
                if tool == "lease":
                    wall = figures["seconds"]
                else:
                    wall = (aws_runs if tool == "aws" else floor_runs)[-1]
                # Measured around the upload and the listing after it; the listing is
                # a small share of either.
                cpu[tool].append(client_cpu(tool) - before[2])
                busy[tool].append((cpu_seconds(moto.pid) - before[1]) /
                                  (time.perf_counter() - before[0]) * 100)

        mb = size / 1e6
        results = {
            "leased uploader": {"median_s": statistics.median(lease_runs), "trials_s": lease_runs,
                                "process_wall_s": lease_wall, "concurrency": concurrency,
                                "peak_rss_mib": max(peak_rss)},
            "aws s3 cp --recursive": {"median_s": statistics.median(aws_runs),
                                      "trials_s": aws_runs, "version": aws_version},
            "emulator floor (in-process boto3)": {"median_s": statistics.median(floor_runs),
                                                  "trials_s": floor_runs},
        }
        for r, tool in zip(results.values(), ["lease", "aws", "floor"]):
            r["mb_per_s"] = mb / r["median_s"]
            r["client_cpu_s"] = statistics.median(cpu[tool])
            r["emulator_cpu_percent_of_core"] = statistics.median(busy[tool])
        ratio = results["leased uploader"]["mb_per_s"] / results["aws s3 cp --recursive"]["mb_per_s"]
        print(f"{files} files, {size} bytes; {args.trials} trials each; build profile "
              f"{profile}; {aws_version}")
        print(f"{'tool':34} {'median s':>9} {'MB/s':>8} {'CPU s':>6} {'emulator':>8}  trials")
        for name, r in results.items():
            trials = " ".join(f"{t:.2f}" for t in r["trials_s"])
            print(f"{name:34} {r['median_s']:9.2f} {r['mb_per_s']:8.1f} {r['client_cpu_s']:6.1f} "
                  f"{r['emulator_cpu_percent_of_core']:7.0f}%  {trials}")
        print(f"throughput ratio leased/aws = {ratio:.2f}x (target >= 1.5x); uploader peak "
              f"resident memory {max(peak_rss)} MiB at concurrency {concurrency}")
        with open(args.out, "w") as f:
            json.dump({"upload_bundle": {"files": files, "bytes": size, "profile": profile,
                                         "trials": args.trials, "results": results,
                                         "ratio": ratio}}, f, indent=2)
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
