"""Benchmark: `lease list` over 1,000 managed instances vs `aws ec2 describe-instances`
with the same filter, side by side against the same moto server.

Run through tests/bench/run, which provides the virtual environment (moto, awscli)
and the release binary. Prints a table and writes the figures as JSON.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import boto3

N_INSTANCES = 1000
TRIALS = int(os.environ.get("LEASE_BENCH_TRIALS", "7"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    lease, moto_server, out_file = sys.argv[1], sys.argv[2], sys.argv[3]
    port = free_port()
    moto = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
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
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true",
                   NO_COLOR="1")
        env.pop("AWS_PROFILE", None)
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")
        tags = [{"Key": "lease:managed", "Value": "true"}, {"Key": "lease:owner", "Value": "moto"},
                {"Key": "lease:ttl", "Value": "4h"}, {"Key": "lease:job", "Value": "bench"}]
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=N_INSTANCES, MaxCount=N_INSTANCES,
                          InstanceType="t3.micro",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        filters = ("Name=tag:lease:managed,Values=true Name=tag:lease:owner,Values=moto "
                   "Name=instance-state-name,Values=pending,running,stopping,stopped,shutting-down")
        commands = {
            "lease list": [lease, "list", "-o", "json"],
            "aws ec2 describe-instances": ["aws", "ec2", "describe-instances", "--output", "json",
                                           "--filters", *filters.split(" ")],
        }
        # What neither client can beat: the emulator's own time to filter and render the
        # same query, one raw HTTP request with the body both clients send (no process
        # start, no parsing of the answer).
        raw = "emulator alone (raw request)"
        form = {"Action": "DescribeInstances", "Version": "2016-11-15"}
        for i, f in enumerate(filters.split(" "), 1):
            name, values = f[len("Name="):].split(",Values=")
            form[f"Filter.{i}.Name"] = name
            for j, v in enumerate(values.split(","), 1):
                form[f"Filter.{i}.Value.{j}"] = v
        body = urllib.parse.urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                   # moto reads the service and account from the credential scope and
                   # does not check the signature.
                   "Authorization": "AWS4-HMAC-SHA256 Credential=bench/20261201/us-east-1/ec2/"
                                    "aws4_request, SignedHeaders=host, Signature=0"}

        def run(name):
            """One timed query; the number of instances it saw."""
            start = time.perf_counter()
            if name == raw:
                with urllib.request.urlopen(urllib.request.Request(endpoint + "/", data=body,
                                                                   headers=headers)) as r:
                    answer = r.read()
                times[name].append(time.perf_counter() - start)
                return answer.count(b"<instanceId>")
            out = subprocess.run(commands[name], env=env, capture_output=True, check=True).stdout
            times[name].append(time.perf_counter() - start)
            data = json.loads(out)
            return (len(data) if isinstance(data, list)
                    else sum(len(r["Instances"]) for r in data["Reservations"]))

        # Interleaved, each first in turn: the emulator slows as a run goes on, and
        # none of the three may always meet it fresher than the others.
        names = [*commands, raw]
        times = {name: [] for name in names}
        for trial in range(TRIALS):
            k = trial % len(names)
            for name in names[k:] + names[:k]:
                count = run(name)
                assert count == N_INSTANCES, f"{name} saw {count} instances"
        results = {name: {"median_s": statistics.median(t), "min_s": min(t), "trials": TRIALS,
                          "instances": N_INSTANCES} for name, t in times.items()}
        ratio = results["lease list"]["median_s"] / results["aws ec2 describe-instances"]["median_s"]
        print(f"{'command':32} {'median':>9} {'min':>9}  (over {N_INSTANCES} instances, {TRIALS} runs)")
        for name, r in results.items():
            print(f"{name:32} {r['median_s']:8.3f}s {r['min_s']:8.3f}s")
        print(f"lease list / aws cli = {ratio:.2f}x the time (target <= 0.5x)")
        with open(out_file, "w") as f:
            json.dump({"list_1000": results, "ratio": ratio}, f, indent=2)
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
